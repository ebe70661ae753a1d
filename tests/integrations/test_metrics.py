"""What the frameworks' logs get when training ends: the verdict's code, the count of
findings by severity and kind, and the findings as text, from a real diagnosis."""

from __future__ import annotations

from typing import get_args

import pytest
import torch
from torch import nn

import backprobe as bp
from backprobe.diagnose.verdict import Status
from backprobe.errors import ProbeConfigError
from backprobe.integrations.metrics import (
    DEFAULT_METRICS,
    VERDICT_CODES,
    LoggedMetrics,
    findings_text,
)


def test_every_verdict_status_has_a_logged_code():
    assert sorted(VERDICT_CODES) == sorted(get_args(Status))
    assert VERDICT_CODES[:4] == ("healthy", "unknown", "vanishing", "exploding")


def starved_run(make_probe) -> bp.Probe:
    """Ten sigmoid layers: the first layers' gradients vanish (a warning or error)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(10):
        layers += [nn.Linear(8, 8), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(8, 1))
    probe = make_probe(model)
    with probe:
        model(torch.randn(16, 8)).pow(2).mean().backward()
        probe.step()
    return probe


def test_the_final_log_counts_the_findings_and_tells_them_as_text(make_probe):
    probe = starved_run(make_probe)
    found, judged = bp.findings(probe), bp.verdict(probe)
    assert judged.status == "vanishing" and found

    values, texts = LoggedMetrics("bp").final(judged, found)
    assert values["bp/verdict"] == VERDICT_CODES.index("vanishing")
    for severity in ("info", "warning", "error"):  # zero included
        assert values[f"bp/findings/{severity}"] == sum(f.severity == severity for f in found)
    for kind in {f.kind for f in found}:
        assert values[f"bp/findings/{kind}"] == sum(f.kind == kind for f in found)
    assert len(values) == 1 + 3 + len({f.kind for f in found})

    text = texts["bp/findings"]
    assert text == findings_text(judged, found)
    lines = text.splitlines()
    assert lines[0] == f"verdict at step 0: {judged}"
    for finding in found:
        assert f"- [{finding.severity}] {finding.kind}: {finding.summary}" in lines
        if finding.remedies:
            assert f"  try: `{finding.remedies[0].call}`" in lines
    shown = [line for line in lines if line.startswith("- [")]
    ranks = [("info", "warning", "error").index(line[3 : line.index("]")]) for line in shown]
    assert ranks == sorted(ranks, reverse=True)  # most severe first


def test_a_healthy_run_says_so_and_the_metrics_choose_what_is_logged(make_probe):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    probe = make_probe(model)
    with probe:
        model(torch.randn(32, 8)).pow(2).mean().backward()
        probe.step()
    judged = bp.verdict(probe)
    values, texts = LoggedMetrics(metrics=["verdict"]).final(judged, [])
    assert values == {"backprobe/verdict": 0.0} and texts == {}
    values, texts = LoggedMetrics(metrics=["findings_text"]).final(judged, [])
    assert values == {}
    assert texts["backprobe/findings"].endswith("no findings: nothing above the thresholds")
    assert {"findings", "findings_text", "verdict"} <= set(DEFAULT_METRICS)
    with pytest.raises(ProbeConfigError, match=r"Expected logged metrics among .*got nope"):
        LoggedMetrics(metrics=["verdict", "nope"])
