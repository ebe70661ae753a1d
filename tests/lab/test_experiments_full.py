"""The lab's full configurations against the published directions (``make test-slow``).

Hours on a laptop CPU in all (the adding and temporal-order experiments dominate); each
experiment is one test, run with its own number of seeds, two at a time. The checks are
the table's verdicts (every expectation an experiment declares must hold on every seed) plus,
for experiments without a published number, the direction the lab claims.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from backprobe.lab.experiments import experiments, get_experiment, run_experiment
from backprobe.lab.experiments.table import results_rows

pytestmark = pytest.mark.slow


def _run(name: str, db: Path) -> dict[str, dict[str, float]]:
    """Run the full experiment; return {variant: {metric: mean over seeds}}."""
    results = run_experiment(
        name, seeds=get_experiment(name).seeds, jobs=2, db=db, console=Console(quiet=True)
    )
    merged: dict[str, dict[str, list[float]]] = {}
    for r in results:
        for metric, value in r.metrics.items():
            merged.setdefault(r.job.variant, {}).setdefault(metric, []).append(value)
    return {v: {m: float(np.mean(x)) for m, x in ms.items()} for v, ms in merged.items()}


#: Claims docs/results.md reports as failing (make results, 2026-12-07), by experiment:
#: (variant prefix, metric). The LSTM on adding at T = 100 stays at the baseline on seed 1
#: (test MSE 0.158); tanh at sigma_w^2 = 0.8 trains to 29-33 layers, 2.1-2.4 x 6 xi_c,
#: outside the x2 of Schoenholz et al.'s Fig. 5 on every seed. They may fail here too;
#: any other claim that fails is a regression.
KNOWN_FAILURES = {
    "adding": {("lstm-T100", "test_mse")},
    "depth-scale": {("tanh σ_w²=0.8", "max_trainable_depth")},
}


@pytest.mark.parametrize("name", [e.name for e in experiments()])
def test_full_experiment_reproduces_what_it_declares(name: str, tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    m = _run(name, db)
    judged = [r for r in results_rows(db, [name]) if r.verdict]
    known = KNOWN_FAILURES.get(name, set())
    failed = [
        (r.variant, r.metric, r.value, r.reference)
        for r in judged
        if r.verdict != "reproduced"
        and not any(r.variant.startswith(v) and r.metric == k for v, k in known)
    ]
    assert not failed
    if name == "autocomplete":  # the seeds: gated cells remember "today" for longer
        reach = {r.variant.split(" ")[0]: r.value for r in results_rows(db, [name])
                 if r.metric == "longest_filler_solved"}  # fmt: skip
        assert reach["rnn"] == 5 and reach["lstm"] >= 20 and reach["gru"] >= 20
        assert m["rnn-L100"]["test_accuracy"] < 0.75
    if name == "exploding":
        assert m["no-clip"]["max_grad_norm"] > 1e3 * m["clip"]["max_grad_norm"]
        assert m["clip"]["test_mse"] < 0.167
    if name == "adding":
        # The GRU goes far below the baseline at T = 200 (at least half of it). The LSTM
        # does in Le et al. 2015 (Fig. 2) with far more steps; in the 1,500 that make
        # results affords at T = 200 it stays at the baseline on every seed (0.164 on
        # docs/results.md), which no declared claim contradicts.
        assert m["gru-T200"]["test_mse"] < 0.0835
    if name == "esn":  # far better than persistence; ReservoirPy's ratio is checked above
        assert m["mackey-glass"]["test_rmse"] < 0.1 * m["mackey-glass"]["persistence_rmse"]
    if name == "depth-sweep":
        deepest = {r.variant.split(" ")[0]: r.value for r in results_rows(db, [name])
                   if r.metric == "max_trainable_depth"}  # fmt: skip
        assert deepest["relu-he"] >= 32 and deepest["tanh-orthogonal"] >= 32
        assert math.isnan(deepest["sigmoid-xavier"]) or deepest["sigmoid-xavier"] <= 16
