"""The diagnosis on real architectures: healthy ones stay healthy, planted pathologies are
found with the right kind in the right place, and the verdict agrees with the findings."""

from __future__ import annotations

import pytest

from .judge import CASES, HEALTHY, PLANTED, examine, false_findings, found, score

pytest.importorskip("transformers")

SEVERITY = {"info": 0, "warning": 1, "error": 2}


def test_the_zoo_is_big_enough() -> None:
    assert len({c.architecture for c in HEALTHY}) >= 10
    assert len(PLANTED) >= 12


@pytest.mark.parametrize("name", [c.name for c in HEALTHY])
def test_a_healthy_model_gets_no_warning_and_a_healthy_verdict(name: str) -> None:
    judgment = examine(name)
    assert judgment.significant == [], [(f.kind, f.summary) for f in judgment.significant]
    assert judgment.verdict.status == "healthy", judgment.verdict.message


@pytest.mark.parametrize("name", [c.name for c in PLANTED])
def test_a_planted_pathology_is_found_in_place(name: str) -> None:
    case, judgment = CASES[name], examine(name)
    described = [(f.kind, f.severity, f.where) for f in judgment.findings]
    assert found(case, judgment), described
    assert false_findings(case, judgment) == [], described


@pytest.mark.parametrize("name", [c.name for c in PLANTED])
def test_the_verdict_names_the_most_severe_finding(name: str) -> None:
    judgment = examine(name)
    verdict = judgment.verdict
    assert verdict.status != "healthy" and verdict.finding is not None, verdict.message
    worst = max(SEVERITY[f.severity] for f in judgment.findings)
    assert SEVERITY[verdict.finding.severity] == worst
    assert verdict.finding in judgment.findings
    assert verdict.finding.summary in verdict.message  # the same words and numbers


def test_recall_and_precision_over_the_zoo() -> None:
    result = score()
    assert result.recall == 1.0 and result.precision == 1.0, result
