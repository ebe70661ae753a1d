"""The terminal summary where nobody reads it in a terminal: a pipe or a log file keeps
every number whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from backprobe.report.console import PIPE_WIDTH, output_console

SUMMARY_IN_A_PIPE = textwrap.dedent(
    """
    import json, torch
    from torch import nn
    import backprobe as bp
    from backprobe._format import compact_number

    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 1))
    model = nn.Sequential()
    model.add_module("encoder_block_with_a_rather_long_descriptive_name", inner)
    with bp.Probe(model, name="long") as probe:
        for _ in range(2):
            loss = model(torch.randn(4, 4) * 1e3).pow(2).mean() * 1e6
            loss.backward()
            probe.step(loss)
    bp.summary(probe)
    rows = zip(probe.history("grad_norm")[-1], probe.history("grad_to_weight")[-1])
    print(json.dumps([[compact_number(v) for v in row if v == v] for row in rows]))
    """
)


def test_summary_in_a_pipe_keeps_whole_rows():
    """Regression: printed to a pipe, the table was cut at 80 columns mid-number."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run(
        [sys.executable, "-c", SUMMARY_IN_A_PIPE],
        capture_output=True,
        text=True,
        env={**env, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    *summary, expected = done.stdout.splitlines()
    rows = [line for line in summary if "encoder_block_with_a_rather_long_descriptive_name" in line]
    assert len(rows) >= 3
    for row, numbers in zip(rows, json.loads(expected), strict=False):
        assert "…" not in row
        for number in numbers:
            assert f" {number} " in row, (number, row)


def test_a_non_terminal_console_is_wide_unless_columns_say_otherwise(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert output_console().width == PIPE_WIDTH  # pytest captures stdout: not a terminal
    monkeypatch.setenv("COLUMNS", "90")
    assert output_console().width == 90
