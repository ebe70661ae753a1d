"""The overhead benchmark keeps running: its quick mode, as a smoke test (no timings
are asserted; `make bench` runs the real thing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def test_overhead_benchmark_quick_mode_prints_its_table():
    rows = _quick_table()
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert names[:3] == ["plain", "backprobe", "backprobe/10"]
    assert "x (" in rows[2]  # a ratio with its interquartile range


def test_recurrent_workload_prints_the_time_profile_row():
    rows = _quick_table("--workload", "lstm")
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert names == ["plain", "backprobe time/10"]
    assert "x (" in rows[-1]
