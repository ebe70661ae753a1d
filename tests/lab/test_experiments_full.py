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


@pytest.mark.parametrize("name", [e.name for e in experiments()])
def test_full_experiment_reproduces_what_it_declares(name: str, tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    m = _run(name, db)
    judged = [r for r in results_rows(db, [name]) if r.verdict]
    failed = [
        (r.variant, r.metric, r.value, r.reference) for r in judged if r.verdict != "reproduced"
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
        # LSTM and GRU go far below the baseline at T = 150-400 (Le et al. 2015, Fig. 2;
        # docs/references.md): at least half of it at 200
        assert m["lstm-T200"]["test_mse"] < 0.0835 and m["gru-T200"]["test_mse"] < 0.0835
    if name == "esn":  # far better than persistence; ReservoirPy's ratio is checked above
        assert m["mackey-glass"]["test_rmse"] < 0.1 * m["mackey-glass"]["persistence_rmse"]
    if name == "depth-sweep":
        deepest = {r.variant.split(" ")[0]: r.value for r in results_rows(db, [name])
                   if r.metric == "max_trainable_depth"}  # fmt: skip
        assert deepest["relu-he"] >= 32 and deepest["tanh-orthogonal"] >= 32
        assert math.isnan(deepest["sigmoid-xavier"]) or deepest["sigmoid-xavier"] <= 16
