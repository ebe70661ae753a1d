"""The guard's actions and the sentinel in `backprobe show` and the HTML report."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import backprobe as bp
from backprobe.cli import app
from backprobe.report.guard import guard_heading, guard_rows, sentinel_line
from backprobe.report.html import render_report


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> tuple[str, int]:
    """A stored run whose guard skipped the updates of steps 30 and 40 (one sample's
    target a thousand times too large in each)."""
    db = tmp_path_factory.mktemp("guard") / "runs.db"
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    probe = bp.Probe(net, db=db, name="guarded", every=10)
    guard = bp.Guard(probe, opt, on_spike="skip")
    g = torch.Generator().manual_seed(1)
    with probe:
        for step in range(45):
            x = torch.randn(16, 4, generator=g)
            y = x.sum(1, keepdim=True)
            if step in (30, 40):
                y[7] *= 1e3
            loss = (net(x) - y).pow(2).mean()
            loss.backward()
            guard.step(loss)
            opt.zero_grad()
    assert guard.skipped == [30, 40]
    return str(db), probe.run_id or 0


def test_the_guard_rows_name_step_action_reason_and_samples(guarded):
    run = bp.open_run(guarded[0], guarded[1])
    rows = guard_rows(run)
    assert [(r["step"], r["action"]) for r in rows] == [
        (30, "update skipped"),
        (40, "update skipped"),
    ]
    assert all("gradient norm" in r["reason"] and "samples 7" in r["where"] for r in rows)
    assert guard_heading(run) == "guard: 2 actions (2 updates skipped)"
    assert sentinel_line(run) == "sentinel: every step, 45 steps (0…44)"


def test_show_lists_the_guard_actions(guarded):
    db, run_id = guarded
    result = CliRunner().invoke(app, ["show", str(run_id), "--db", db], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "sentinel: every step, 45 steps" in out
    assert "guard: 2 actions (2 updates skipped)" in out
    assert "update skipped" in out and "samples 7" in out


def test_the_html_report_has_a_guard_section_and_the_spike_findings(guarded):
    html = render_report(bp.open_run(*guarded))
    assert "<h3>Guard</h3>" in html and "guard: 2 actions (2 updates skipped)" in html
    assert html.count("update skipped") == 2
    assert "sentinel: every step, 45 steps" in html
    assert "spike at step 30" in html and "the guard acted on it" in html


def test_a_run_without_a_guard_has_no_guard_section(make_probe):
    net = nn.Linear(3, 1)
    probe = make_probe(net)
    with probe:
        loss = net(torch.randn(2, 3)).pow(2).mean()
        loss.backward()
        probe.step(loss)
    assert "<h3>Guard</h3>" not in render_report(probe)
    assert guard_heading(probe) is None
