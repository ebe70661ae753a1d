"""The ESN's baselines: a least-squares AR(p) (against numpy's lstsq on a toy series),
the order chosen on held-out data, persistence, and ReservoirPy when it is missing."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from backprobe.lab.experiments import run_experiment
from backprobe.lab.experiments.reservoir import ar_fit, ar_predict, choose_ar_order, persistence
from backprobe.lab.experiments.table import results_rows


def _ar3(n: int = 600, seed: int = 0) -> np.ndarray:
    """x_t = 0.5 + 0.6 x_{t−1} − 0.3 x_{t−2} + 0.2 x_{t−3} + 0.01 ε_t."""
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    for t in range(3, n):
        x[t] = 0.5 + 0.6 * x[t - 1] - 0.3 * x[t - 2] + 0.2 * x[t - 3] + 0.01 * rng.normal()
    return x


def test_ar_fit_is_least_squares_on_the_lagged_series() -> None:
    x = _ar3()
    coef = ar_fit(x, 3, 10, 500)
    design = np.stack([np.ones(490), x[9:499], x[8:498], x[7:497]], axis=1)
    expected, *_ = np.linalg.lstsq(design, x[10:500], rcond=None)
    np.testing.assert_allclose(coef, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(coef, [0.5, 0.6, -0.3, 0.2], atol=0.05)
    # One step ahead from the true past values.
    pred = ar_predict(x, coef, 500, 600)
    lags = np.stack([np.ones(100), x[499:599], x[498:598], x[497:597]], axis=1)
    np.testing.assert_allclose(pred, lags @ coef, rtol=1e-12)
    assert np.sqrt(np.mean((pred - x[500:600]) ** 2)) < 0.015  # about the noise, 0.01


def test_the_order_is_chosen_on_held_out_data() -> None:
    x = _ar3(2000)
    assert choose_ar_order(x, 20, 1500, max_order=10) in (3, 4, 5)
    # White noise around a level: no lag helps much, the smallest order is as good.
    noise = np.random.default_rng(1).normal(size=1000)
    assert choose_ar_order(noise, 20, 800, max_order=5) <= 3


def test_persistence_predicts_the_previous_value() -> None:
    x = np.arange(10.0) ** 2
    np.testing.assert_array_equal(persistence(x, 5, 9), x[4:8])


def test_esn_rows_say_when_reservoirpy_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "reservoirpy", None)  # import fails
    monkeypatch.setitem(sys.modules, "reservoirpy.nodes", None)
    db = tmp_path / "runs.db"
    (result,) = run_experiment(
        "esn", variants=["mackey-glass"], quick=True, db=db, console=Console(quiet=True)
    )
    m = result.metrics
    assert math.isnan(m["reservoirpy_rmse"]) and math.isnan(m["rmse_over_reservoirpy"])
    # The baselines are on the same test targets: the ratios are the RMSEs' quotients.
    assert m["rmse_over_persistence"] == pytest.approx(m["test_rmse"] / m["persistence_rmse"])
    assert m["rmse_over_ar"] == pytest.approx(m["test_rmse"] / m["ar_rmse"])
    assert m["rmse_over_persistence"] < 0.2 and 1 <= m["ar_order"] <= 20
    rows = {r.metric: r for r in results_rows(db, ["esn"])}
    missing = rows["rmse_over_reservoirpy"]
    assert "not installed" in missing.note and missing.verdict == ""
    assert rows["ar_order"].values == (m["ar_order"],)
