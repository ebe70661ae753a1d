"""Experiments across depth: multilayer perceptrons on the insurance and teacher tasks.

One loop (:func:`run_mlp`): a :class:`~backprobe.lab.models.DeepMLP`, mini-batches drawn
with replacement from a fixed training set, the probe attached, test accuracy at the
evaluations. The depth sweeps read their result across variants: the deepest network
that still trains, against mean-field theory's 6ξ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..models import DeepMLP
from ..tasks import Task, classification_task, insurance_task
from .base import Expectation, Experiment, RunContext
from .registry import register
from .training import Loop, build_optimizer, train

__all__ = ["MLPConfig", "gaussian_init_", "run_mlp"]

MLPInit = Literal["default", "xavier", "he", "orthogonal", "gaussian"]


@dataclass(frozen=True)
class MLPConfig:
    """A ``depth``-hidden-layer MLP of ``width`` units trained by SGD on a task.

    ``task``: "teacher" (:func:`~backprobe.lab.tasks.classification_task`, 4 classes of
    6 features, the demo's) or "insurance" (the seeds' buyers). ``init="gaussian"`` draws
    W ~ N(0, σ_w²/fan_in), b ~ N(0, σ_b²): mean-field theory's ensemble.
    """

    task: Literal["teacher", "insurance"] = "teacher"
    depth: int = 3
    width: int = 64
    activation: Literal["sigmoid", "tanh", "relu"] = "sigmoid"
    init: MLPInit = "default"
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    optimizer: Literal["sgd", "adam", "rmsprop"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    batch: int = 128
    steps: int = 1000
    n_train: int = 8192
    n_test: int = 2048
    eval_every: int = 250
    record_every: int = 25


@torch.no_grad()
def gaussian_init_(model: DeepMLP, sigma_w: float, sigma_b: float) -> None:
    """W ~ N(0, σ_w²/fan_in) and b ~ N(0, σ_b²) for every Linear (Poole et al. 2016)."""
    for linear in model.linears:
        linear.weight.normal_(0.0, sigma_w / math.sqrt(linear.in_features))
        linear.bias.normal_(0.0, sigma_b)


def _task(config: MLPConfig, seed: int) -> Task:
    if config.task == "insurance":
        return insurance_task(config.n_train, config.n_test, seed=seed)
    return classification_task(n_train=config.n_train, n_test=config.n_test, seed=seed)


def _factor_correlations(model: DeepMLP, task: Task) -> dict[str, float]:
    """For the insurance task: how well the last hidden layer's best unit tracks each
    hidden factor, max |Pearson r| over units (the seeds' "these hidden layers are
    extracting features")."""
    if model.depth == 0 or getattr(task, "awareness_test", None) is None:
        return {}
    hidden = task.x_test
    for layer in list(model)[:-1]:  # up to the last activation: [n, width]
        hidden = layer(hidden)
    out = {}
    for name in ("awareness", "affordability"):
        factor = getattr(task, f"{name}_test")
        h = hidden - hidden.mean(0)
        f = factor - factor.mean()
        r = (h * f[:, None]).sum(0) / (h.norm(dim=0) * f.norm() + 1e-12)
        out[f"{name}_corr"] = float(r.abs().max())
    return out


def run_mlp(config: MLPConfig, ctx: RunContext) -> dict[str, float]:
    """Train one MLP on the configured task; test accuracy, gradient ratio and more."""
    task = _task(config, ctx.seed)
    init = "default" if config.init == "gaussian" else config.init
    model = DeepMLP(
        task.n_features, config.width, config.depth, task.n_classes, config.activation, init
    )
    if config.init == "gaussian":
        gaussian_init_(model, config.sigma_w, config.sigma_b)
    optimizer = build_optimizer(config.optimizer, model.parameters(), config.lr, config.momentum)
    g = torch.Generator().manual_seed(ctx.seed)
    batches = torch.randint(0, len(task.y_train), (config.steps, config.batch), generator=g)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return task.x_train[batches[step]], task.y_train[batches[step]]

    def evaluate() -> dict[str, float]:
        accuracy = float((model(task.x_test).argmax(1) == task.y_test).float().mean())
        return {"test_accuracy": accuracy, **_factor_correlations(model, task)}

    loop = Loop(config.steps, config.eval_every, config.record_every)
    metrics = train(model, ctx, loop, optimizer, batch, F.cross_entropy, evaluate)
    ceiling = getattr(task, "bayes", math.nan)
    return {**metrics, "chance": task.chance, "ceiling": ceiling}


# --- the seeds' insurance network -----------------------------------------------------------


@dataclass(frozen=True)
class InsuranceConfig(MLPConfig):
    """The seeds' buyers: 4 inputs, 2 classes; ``ceiling`` is the true rule's accuracy."""

    task: Literal["teacher", "insurance"] = "insurance"
    n_train: int = 4096


_SEEDS = "seeds/000 (direction)"
INSURANCE = register(
    Experiment(
        name="insurance",
        title="The seeds' insurance net (age, education, income, savings → buys): short vs deep",
        config=InsuranceConfig,
        run=run_mlp,
        variants={
            # 4 inputs → 2 hidden units (awareness, affordability) → the answer
            "seeds-net": {"depth": 1, "width": 2, "lr": 1.0},
            "deep-sigmoid": {"depth": 20, "width": 16, "lr": 1.0},
            "deep-relu-he": {
                "depth": 20,
                "width": 16,
                "activation": "relu",
                "init": "he",
                "lr": 0.01,
            },
        },
        quick={"steps": 150, "n_train": 1024, "n_test": 512, "eval_every": 50},
        metrics=("test_accuracy", "grad_ratio", "affordability_corr"),
        expect={
            "seeds-net": [Expectation("test_accuracy", ">", 0.85, _SEEDS)],
            "deep-sigmoid": [
                Expectation("grad_ratio", "<", 1e-3, "Hochreiter 1991: ≤ 0.25 per layer")
            ],
        },
    )
)
