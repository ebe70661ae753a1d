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


@pytest.mark.parametrize(
    "name",
    ["deep post-LN transformer without warm-up", "gpt2 blocks starved behind tied embeddings"],
)
def test_a_starving_residual_stream_is_not_told_to_add_skip_connections(name: str) -> None:
    (vanishing,) = [f for f in examine(name).significant if f.kind == "vanishing"]
    titles = [r.title for r in vanishing.remedies]
    assert "Add skip connections" not in titles, titles
    assert titles[:2] == [
        "Normalise inside the residual branch (pre-LN)",
        "Warm the learning rate up",
    ]
    assert "residual stream" in vanishing.cause
    assert "Xiong et al. 2020" in vanishing.references
