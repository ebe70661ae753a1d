"""Every lab experiment's quick configuration, run as CI runs it: stored in a run database
with its config, read back by the results table, and pointing the published way.

The quick configurations are far too small to reproduce the papers' numbers (that is the
full configurations' job, tests/lab/test_experiments_full.py, marked slow); each test
asserts only the *direction* of the result, which holds already at this size.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from backprobe.lab.experiments import JobResult, run_experiment
from backprobe.lab.experiments.table import collect, results_rows
from backprobe.store.db import RunDatabase


def _run(db: Path, name: str, variants: list[str], **kwargs: object) -> dict[str, dict]:
    results: list[JobResult] = run_experiment(
        name,
        variants=variants,
        quick=True,
        db=db,
        console=Console(quiet=True),
        **kwargs,  # type: ignore[arg-type]
    )
    assert {r.job.variant for r in results} == set(variants)
    return {r.job.variant: r.metrics for r in results}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


def test_runs_are_stored_with_their_config_and_metrics(db: Path) -> None:
    m = _run(db, "exploding", ["no-clip", "clip"], settings=["n_test=100"])
    with RunDatabase(db, read_only=True) as database:
        infos = database.runs()
    assert [i.name for i in infos] == ["lab/exploding/no-clip/s0", "lab/exploding/clip/s0"]
    lab = infos[0].config["lab"]
    assert lab["experiment"] == "exploding" and lab["variant"] == "no-clip"
    assert lab["profile"] == "quick+set" and infos[0].config["config"]["n_test"] == 100
    assert infos[1].config["config"]["clip"] == 1.0
    stored = {r.variant: r.metrics for r in collect(db)}
    for variant in ("no-clip", "clip"):
        assert stored[variant]["test_mse"] == pytest.approx(m[variant]["test_mse"])
    # Without clipping the gradient explodes (λ1 = 3, lr 0.05) and the loss with it.
    assert m["no-clip"]["max_grad_norm"] > 1e3 * m["clip"]["max_grad_norm"]
    assert m["clip"]["test_mse"] < 0.25
    assert not m["no-clip"]["test_mse"] < 1.0  # huge, inf or NaN


def test_table_reads_the_newest_invocation_with_verdicts(db: Path) -> None:
    _run(db, "insurance", ["seeds-net", "deep-sigmoid"], seeds=2)
    rows = results_rows(db, ["insurance"])
    by = {(r.variant, r.metric): r for r in rows}
    acc = by[("seeds-net (quick)", "test_accuracy")]
    assert acc.seeds == 2 and acc.value > 0.85 and acc.verdict == "reproduced"
    assert acc.reference.startswith("> 0.85")
    # The deep sigmoid net: chance accuracy, a vanished first-layer gradient.
    assert by[("deep-sigmoid (quick)", "test_accuracy")].value < 0.6
    assert by[("deep-sigmoid (quick)", "grad_ratio")].value < 1e-3
    assert by[("deep-sigmoid (quick)", "grad_ratio")].verdict == "reproduced"
    # A newer invocation replaces the older one in the table.
    _run(db, "insurance", ["seeds-net"], settings=["steps=2"])
    rows = results_rows(db, ["insurance"])
    fresh = [r for r in rows if r.metric == "test_accuracy" and r.variant.startswith("seeds")]
    assert fresh[0].seeds == 1 and "quick+set" in fresh[0].variant


def test_parallel_jobs_match_serial_runs(tmp_path: Path) -> None:
    """Seeds in worker processes give what they give in this process, in plan order."""
    serial = run_experiment(
        "esn", variants=["mackey-glass"], seeds=2, quick=True, db=None, console=Console(quiet=True)
    )
    parallel = run_experiment(
        "esn",
        variants=["mackey-glass"],
        seeds=2,
        jobs=2,
        quick=True,
        db=tmp_path / "runs.db",
        console=Console(quiet=True),
    )
    assert [r.job.seed for r in parallel] == [0, 1]
    for a, b in zip(serial, parallel, strict=True):
        assert a.metrics == pytest.approx(b.metrics, nan_ok=True)
    assert serial[0].metrics["test_rmse"] != serial[1].metrics["test_rmse"]
    assert len(collect(tmp_path / "runs.db")) == 2
