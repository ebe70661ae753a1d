"""Echo state networks: no gradient through time at all, so nothing to vanish.

The reservoir is fixed and random; only the linear readout is fitted, by ridge regression
(:class:`~backprobe.remedies.EchoStateNetwork`). The run is stored like every lab run:
the probe records one step, the readout's loss on the test data and its gradient, with
the test metrics as scalars.

On Mackey-Glass the ESN is compared, on the same split and seed, with predictors that
need no reservoir: persistence (x̂_{t+1} = x_t), a least-squares AR(p) fitted on the
training part (p chosen on its last fifth), and ReservoirPy's ESN with the same
hyper-parameters when ReservoirPy is installed (an optional package: ``pip install
reservoirpy``). R² alone does not tell them apart: persistence already reaches 0.98, and
an AR(p) of high order predicts one step ahead better than the reservoir.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ...probe import Probe
from ...remedies.esn import EchoStateNetwork
from ..tasks import adding_task, mackey_glass
from .base import Expectation, Experiment, RunContext
from .registry import register

__all__ = ["ESNConfig", "ar_fit", "ar_predict", "choose_ar_order", "persistence", "run_esn"]


@dataclass(frozen=True)
class ESNConfig:
    """An ESN of ``units`` tanh units (spectral radius, leak, ridge as in the standard
    Mackey-Glass benchmark) on one of two tasks:

    - ``mackey-glass``: one-step-ahead forecast of ``points`` points of the series (τ = 17),
      the last ``test_fraction`` held out, ``warmup`` steps not fitted; RMSE and R².
    - ``adding``: the adding problem of length ``length``; the readout is fitted on the
      last state of ``n_train`` sequences; test MSE against the 0.167 baseline.
    """

    task: Literal["mackey-glass", "adding"] = "mackey-glass"
    units: int = 100
    spectral_radius: float = 1.25
    leak: float = 0.3
    input_scaling: float = 1.0
    ridge: float = 1e-6
    points: int = 2000
    test_fraction: float = 0.2
    warmup: int = 100
    length: int = 100
    n_train: int = 5000
    n_test: int = 1000
    max_order: int = 40  # the AR baseline's largest order p


def _store(
    esn: EchoStateNetwork,
    ctx: RunContext,
    predict: Callable[[], torch.Tensor],
    y: torch.Tensor,
    metrics: dict[str, float],
) -> None:
    """One recorded probe step: the test loss of ``predict()`` against ``y`` and its
    gradient (the readout's only), with the metrics as scalars."""
    probe = Probe(esn, every=1, db=ctx.db, name=ctx.name, config=ctx.stored_config)
    with probe:
        loss = F.mse_loss(predict(), y)
        loss.backward()
        for name, value in metrics.items():
            probe.record_scalar(name, value)
        probe.step(loss)
    ctx.report(1, 1, float(loss.detach()), "no gradient through time")


def _reservoir(config: ESNConfig, inputs: int, seed: int, batch_first: bool) -> EchoStateNetwork:
    """The configured ESN reading ``inputs`` channels, with one output."""
    return EchoStateNetwork(
        inputs,
        config.units,
        1,
        spectral_radius=config.spectral_radius,
        leak=config.leak,
        input_scaling=config.input_scaling,
        ridge=config.ridge,
        batch_first=batch_first,
        seed=seed,
    )


def _lags(series: np.ndarray, p: int, start: int, stop: int) -> np.ndarray:
    """[stop − start, p + 1]: a 1 and x_{t−1} … x_{t−p} for each target t in [start, stop)."""
    columns = [np.ones(stop - start)] + [series[start - k : stop - k] for k in range(1, p + 1)]
    return np.stack(columns, axis=1)


def ar_fit(series: np.ndarray, p: int, start: int, stop: int) -> np.ndarray:
    """Least-squares AR(p) with an intercept, fitted to predict ``series[t]`` from the p
    values before it for the targets t in [start, stop) (start ≥ p); [p + 1]
    coefficients, the intercept first."""
    coef, *_ = np.linalg.lstsq(_lags(series, p, start, stop), series[start:stop], rcond=None)
    return coef


def ar_predict(series: np.ndarray, coef: np.ndarray, start: int, stop: int) -> np.ndarray:
    """One-step-ahead predictions of ``series[start:stop]`` from the true values before
    each target (as the ESN reads the true series): [stop − start]."""
    return _lags(series, len(coef) - 1, start, stop) @ coef


def _rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - truth) ** 2)))


def choose_ar_order(series: np.ndarray, first: int, stop: int, max_order: int) -> int:
    """The p in 1 … ``max_order`` whose AR(p), fitted to the targets in [first, cut),
    predicts the targets in [cut, stop) best; cut leaves the last fifth for validation."""
    cut = first + (stop - first) * 4 // 5
    errors = {
        p: _rmse(ar_predict(series, ar_fit(series, p, first, cut), cut, stop), series[cut:stop])
        for p in range(1, max_order + 1)
    }
    return min(errors, key=errors.__getitem__)


def persistence(series: np.ndarray, start: int, stop: int) -> np.ndarray:
    """x̂_t = x_{t−1} for the targets t in [start, stop)."""
    return series[start - 1 : stop - 1]


def _reservoirpy_rmse(
    config: ESNConfig, seed: int, u: np.ndarray, y: np.ndarray, split: int
) -> float:
    """Test RMSE of ReservoirPy's ESN with the config's hyper-parameters on the same split
    (fitted on ``u[:split]``, run on through the test inputs); NaN when ReservoirPy is not
    installed."""
    try:
        from reservoirpy.nodes import Reservoir, Ridge
    except ImportError:
        return math.nan
    model = Reservoir(
        config.units,
        lr=config.leak,
        sr=config.spectral_radius,
        input_scaling=config.input_scaling,
        seed=seed,
    ) >> Ridge(ridge=config.ridge)
    model.fit(u[:split], y[:split], warmup=config.warmup)
    return _rmse(np.asarray(model.run(u[split:])).reshape(-1), y[split:].reshape(-1))


def _mackey_glass(config: ESNConfig, ctx: RunContext) -> dict[str, float]:
    series = mackey_glass(config.points + 1, seed=ctx.seed).float()
    u, y = series[:-1].unsqueeze(-1), series[1:].unsqueeze(-1)  # [T, 1]: x_t → x_{t+1}
    split = round(config.points * (1 - config.test_fraction))
    esn = _reservoir(config, 1, ctx.seed, batch_first=False)
    esn.fit(u[:split], y[:split], warmup=config.warmup)

    def predict() -> torch.Tensor:
        # The reservoir runs on through the test part from where training left it.
        return esn(u[split:], state=esn.last_state).reshape(-1)

    with torch.no_grad():
        pred = predict()
    truth = y[split:].reshape(-1)
    mse = float(((pred - truth) ** 2).mean())
    r2 = 1.0 - mse / float(truth.var(unbiased=False))
    # The baselines on the same series (float64): the ESN's targets are x[t] for t in
    # [warmup + 1, split] (training) and [split + 1, points] (test).
    x = series.double().numpy()
    first = max(config.warmup + 1, config.max_order)
    order = choose_ar_order(x, first, split + 1, config.max_order)
    coef = ar_fit(x, order, first, split + 1)
    target = x[split + 1 :]
    ar = _rmse(ar_predict(x, coef, split + 1, len(x)), target)
    still = _rmse(persistence(x, split + 1, len(x)), target)
    rpy = _reservoirpy_rmse(config, ctx.seed, u.double().numpy(), y.double().numpy(), split)
    rmse = math.sqrt(mse)
    metrics = {
        "test_rmse": rmse,
        "test_r2": r2,
        "persistence_rmse": still,
        "ar_rmse": ar,
        "ar_order": float(order),
        "reservoirpy_rmse": rpy,
        "rmse_over_persistence": rmse / still,
        "rmse_over_ar": rmse / ar,
        "rmse_over_reservoirpy": rmse / rpy,
    }
    _store(esn, ctx, predict, truth, metrics)
    return metrics


def _adding(config: ESNConfig, ctx: RunContext) -> dict[str, float]:
    train = adding_task(config.n_train, config.length, seed=ctx.seed * 10_000_019)
    test = adding_task(config.n_test, config.length, seed=(1 << 40) + ctx.seed)
    esn = _reservoir(config, 2, ctx.seed, batch_first=True)
    # Fit on the last step only: warm up through the first T - 1 steps of every sequence.
    target = train.y.unsqueeze(1).expand(-1, config.length, -1)
    esn.fit(train.x, target, warmup=config.length - 1)

    def predict() -> torch.Tensor:
        return esn(test.x)[:, -1]  # [n, 1], the last step's output

    with torch.no_grad():
        pred = predict()
    metrics = {"test_mse": float(F.mse_loss(pred, test.y)), "baseline": test.baseline}
    _store(esn, ctx, predict, test.y, {"test_mse": metrics["test_mse"]})
    return metrics


def run_esn(config: ESNConfig, ctx: RunContext) -> dict[str, float]:
    """Fit and evaluate one ESN on the configured task."""
    return _mackey_glass(config, ctx) if config.task == "mackey-glass" else _adding(config, ctx)


_RPY = "ReservoirPy's ESN, same hyper-parameters (Trouvain et al. 2020): no worse than ×2"
_NO_RPY = "ReservoirPy not installed (`pip install reservoirpy`): no comparison"
ESN = register(
    Experiment(
        name="esn",
        title="Echo state network on Mackey-Glass (against persistence, AR(p), ReservoirPy) "
        "and on adding: no gradient through time",
        config=ESNConfig,
        run=run_esn,
        variants={
            "mackey-glass": {"task": "mackey-glass"},
            "adding-T100": {"task": "adding", "length": 100},
        },
        quick={"points": 600, "n_train": 500, "n_test": 200, "length": 20, "max_order": 20},
        metrics=(
            "test_rmse",
            "test_r2",
            "persistence_rmse",
            "ar_rmse",
            "ar_order",
            "reservoirpy_rmse",
            "rmse_over_persistence",
            "rmse_over_ar",
            "rmse_over_reservoirpy",
            "test_mse",
        ),
        expect={
            "mackey-glass": [Expectation("rmse_over_reservoirpy", "<", 2.0, _RPY)],
        },
        missing={"reservoirpy_rmse": _NO_RPY, "rmse_over_reservoirpy": _NO_RPY},
        note="One-step-ahead forecasts: the reservoir sees the true series, and so do the "
        "baselines. No paper is checked here: Jaeger & Haas 2004 forecast 84 steps ahead, "
        "free-running, with 1000 units; the rows say how the ESN compares with predictors "
        "that need no reservoir.",
    )
)
