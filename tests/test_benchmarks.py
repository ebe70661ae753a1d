"""The overhead benchmark keeps running: its quick mode, as a smoke test (no timings
are asserted; `make bench` runs the real thing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["plain", "read floor", "backprobe", "backprobe every step"]


def _quick_table(*args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--quick", "--no-memory", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith("| ")]


@pytest.mark.parametrize("workload", ["mlp", "lstm"])
def test_each_workload_prints_its_floor_budget_and_every_step_rows(workload):
    rows = _quick_table("--workload", workload)
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert names[:4] == ROWS
    probes = [row.split("|") for row in rows[1:] if row.split("|")[1].strip() in ROWS[2:]]
    for cells in probes:
        assert "x (" in cells[3]  # a ratio with its interquartile range
        assert cells[5].strip().endswith("%")  # the share of steps recorded
    assert probes[-1][5].strip() == "100 %"  # every step
    (sentinel,) = [row.split("|") for row in rows[1:] if "sentinel only" in row]
    assert "x (" in sentinel[3] and sentinel[5].strip() == "0 %"  # the sentinel alone
