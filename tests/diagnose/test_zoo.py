"""The zoo: every planted pathology is found with the right kind and place, and healthy
models get nothing above ``info``; precision and recall over the whole zoo."""

from __future__ import annotations

import warnings
from functools import cache

import pytest

import backprobe as bp

from .zoo import HEALTHY, PATHOLOGIES, Entry, examine, significant

ENTRIES = {e.name: e for e in PATHOLOGIES + HEALTHY}


@cache
def findings_of(name: str) -> tuple[bp.Finding, ...]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuple(examine(ENTRIES[name]))


def hits(entry: Entry, findings) -> list[bp.Finding]:
    return [f for f in significant(list(findings)) if f.kind == entry.expected and entry.place(f)]


def test_zoo_sizes():
    assert len(PATHOLOGIES) >= 12
    assert len(HEALTHY) >= 6
    assert len(ENTRIES) == len(PATHOLOGIES) + len(HEALTHY)


@pytest.mark.parametrize("name", [e.name for e in PATHOLOGIES])
def test_pathology_is_found_in_place(name):
    entry = ENTRIES[name]
    findings = findings_of(name)
    assert hits(entry, findings), [(f.kind, f.where) for f in findings]
    unexpected = [
        f.kind for f in significant(list(findings)) if f.kind not in (entry.expected, *entry.also)
    ]
    assert not unexpected, unexpected
    for f in findings:
        assert f.summary and f.cause and f.references
        assert f.severity == "info" or f.remedies


@pytest.mark.parametrize("name", [e.name for e in HEALTHY])
def test_healthy_model_has_nothing_above_info(name):
    findings = findings_of(name)
    assert not significant(list(findings)), [(f.kind, f.summary) for f in findings]


def zoo_scores() -> tuple[float, float, float]:
    """(recall, precision, strict precision) over the zoo at warning and above.

    Recall: planted pathologies found with the right kind and place. Precision: findings
    whose kind is the planted one or a listed consequence of it (a finding on a healthy
    model is always false); strict precision counts only the planted kind as correct.
    """
    found = sum(bool(hits(e, findings_of(e.name))) for e in PATHOLOGIES)
    total = correct = strict = 0
    for entry in PATHOLOGIES + HEALTHY:
        for f in significant(list(findings_of(entry.name))):
            total += 1
            correct += entry.expected is not None and f.kind in (entry.expected, *entry.also)
            strict += entry.expected is not None and f.kind == entry.expected
    return found / len(PATHOLOGIES), correct / total, strict / total


def test_precision_and_recall():
    recall, precision, strict = zoo_scores()
    print(f"zoo: recall {recall:.3f}, precision {precision:.3f}, strict precision {strict:.3f}")
    assert recall == 1.0
    assert precision == 1.0
