"""Echo state networks: no gradient through time at all, so nothing to vanish.

The reservoir is fixed and random; only the linear readout is fitted, by ridge regression
(:class:`~backprobe.remedies.EchoStateNetwork`). The run is stored like every lab run:
the probe records one step, the readout's loss on the test data and its gradient, with
the test metrics as scalars.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ...probe import Probe
from ...remedies.esn import EchoStateNetwork
from ..tasks import adding_task, mackey_glass
from .base import Expectation, Experiment, RunContext
from .registry import register

__all__ = ["ESNConfig", "run_esn"]


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
    metrics = {"test_rmse": math.sqrt(mse), "test_r2": r2}
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


_MG_REF = "ESN libraries on Mackey-Glass (REFERENCES.md)"
ESN = register(
    Experiment(
        name="esn",
        title="Echo state network on Mackey-Glass and on adding: no gradient through time",
        config=ESNConfig,
        run=run_esn,
        variants={
            "mackey-glass": {"task": "mackey-glass"},
            "adding-T100": {"task": "adding", "length": 100},
        },
        quick={"points": 600, "n_train": 500, "n_test": 200, "length": 20},
        metrics=("test_rmse", "test_r2", "test_mse"),
        expect={"mackey-glass": [Expectation("test_r2", ">", 0.999, _MG_REF)]},
    )
)
