"""A run says how it was recorded: its schedule, the overhead the probe measured, and how
each kind of statistic was measured, in ``backprobe show`` and the HTML report."""

from __future__ import annotations

import torch
from torch import nn
from typer.testing import CliRunner

import backprobe as bp
from backprobe.cli import app
from backprobe.report.html import render_report
from backprobe.report.recording import measured_overhead, measurement_lines, schedule_line
from backprobe.store.run import open_run


def _recorded_run(tmp_path, **options) -> object:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.LSTM(8, 8))
    db = tmp_path / "runs.db"
    x = torch.randn(5, 3, 4)
    with bp.Probe(nn.Sequential(model[0], model[1]), db=db, name="r", **options) as probe:
        for _ in range(14):
            model[:2](x).sum().backward()
            probe.step()
    return open_run(db, "r")


def test_a_run_shows_its_schedule_and_measured_overhead(tmp_path):
    run = _recorded_run(tmp_path, every=2)
    overhead = measured_overhead(run)
    sentinel = measured_overhead(run, "sentinel_overhead")
    assert overhead is not None and overhead >= 0
    assert sentinel is not None and sentinel > 0  # the sentinel ran at the unrecorded steps
    assert schedule_line(run) == (
        f"schedule every_2, measured overhead {100 * overhead:.1f} % "
        f"+ sentinel {100 * sentinel:.1f} % (every step)"
    )
    assert measurement_lines(run) == [
        "layer statistics: full batch, by forward and backward hooks; a compiled model "
        "runs eagerly at recorded steps"
    ]
    result = CliRunner().invoke(app, ["show", "r", "--db", str(tmp_path / "runs.db")])
    assert result.exit_code == 0, result.output
    assert "schedule every_2, measured overhead" in result.output
    assert "layer statistics: full batch" in result.output
    page = render_report(run)
    assert "schedule every_2, measured overhead" in page
    assert "layer statistics: full batch" in page


def test_a_budget_schedule_is_named(tmp_path):
    run = _recorded_run(tmp_path, budget=0.02)
    assert schedule_line(run).startswith("schedule budget 2%")


def test_recurrent_time_profiles_say_they_use_a_sub_batch():
    probe = bp.Probe(nn.LSTM(4, 4), db=None, time_batch=3)
    assert probe.probe_config["measured"]["time profiles"].startswith("sub-batch of 3 sequences")
