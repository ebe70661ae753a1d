"""Experiments across depth: multilayer perceptrons on the insurance and teacher tasks.

One loop (:func:`run_mlp`): a :class:`~backprobe.lab.models.DeepMLP`, mini-batches drawn
with replacement from a fixed training set, the probe attached, test accuracy at the
evaluations. The depth sweeps read their result across variants: the deepest network
that still trains, against mean-field theory's 6ξ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ...theory.correlation import correlation_depth
from ..models import DeepMLP, MLPActivation
from ..tasks import Task, classification_task, insurance_task
from .base import Expectation, Experiment, Row, RunContext
from .registry import register
from .summaries import reach_rows
from .training import Loop, OptimizerName, build_optimizer, train

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
    activation: MLPActivation = "sigmoid"
    init: MLPInit = "default"
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    optimizer: OptimizerName = "sgd"
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
        rows = batches[min(step, config.steps - 1)]  # a post-mortem after the last step
        return task.x_train[rows], task.y_train[rows]

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


# --- the seeds' short vs long network -------------------------------------------------------

SHORT_VS_LONG = register(
    Experiment(
        name="short-vs-long",
        title="The seeds' short vs 50-layer network (sigmoid), and ReLU + He init as the cure",
        config=MLPConfig,
        run=run_mlp,
        # The demo's chapter 1: sigmoid nets at lr 2 (each layer passes at most 1/4 of the
        # gradient, so updates shrink on the way down), the ReLU + He net at lr 0.01.
        variants={
            "short-sigmoid": {"depth": 3, "lr": 2.0},
            "deep-sigmoid": {"depth": 50, "lr": 2.0},
            "deep-relu-he": {"depth": 50, "activation": "relu", "init": "he", "lr": 0.01},
        },
        quick={"steps": 150, "n_train": 2048, "n_test": 512, "eval_every": 50},
        metrics=("test_accuracy", "grad_ratio"),
        expect={
            "short-sigmoid": [Expectation("test_accuracy", ">", 0.8, "seeds/001 (direction)")],
            "deep-sigmoid": [
                Expectation("grad_ratio", "<", 1e-6, "Hochreiter 1991: ≤ 0.25 per layer"),
                Expectation("test_accuracy", "<", 0.4, "seeds/001 (direction)"),
            ],
            "deep-relu-he": [Expectation("test_accuracy", ">", 0.8, "He et al. 2015")],
        },
    )
)


# --- depth sweeps ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DepthConfig(MLPConfig):
    """A network *trains* when its test accuracy reaches ``trainable_accuracy`` (chance is
    0.25) after ``steps`` steps of SGD with momentum."""

    optimizer: OptimizerName = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    steps: int = 500
    eval_every: int = 250
    record_every: int = 50
    trainable_accuracy: float = 0.6


def _depth_rows(
    experiment: str,
    groups: Mapping[str, Sequence[str]],
    variants: Mapping[str, Mapping[str, object]],
    results: Mapping[str, Mapping[str, Sequence[float]]],
    config: DepthConfig,
    reference: Mapping[str, float] | None = None,
) -> list[Row]:
    """One row per group of variants (same network but depth): the deepest that trains,
    per seed. With ``reference`` (group → 6ξ_c), the verdict checks a factor of 2 either
    way on each seed."""
    return reach_rows(
        experiment,
        groups,
        variants,
        results,
        key="depth",
        metric="max_trainable_depth",
        threshold=config.trainable_accuracy,
        reference=None
        if reference is None
        else {g: (v, f"6ξ_c, {_SCHOENHOLZ}") for g, v in reference.items()},
    )


SWEEP_DEPTHS = (2, 8, 16, 32, 64)
_SWEEP_VARIANTS: dict[str, dict[str, object]] = {}
_SWEEP_GROUPS: dict[str, list[str]] = {}
for _act in ("sigmoid", "tanh", "relu"):
    for _init in ("xavier", "he", "orthogonal"):
        for _depth in SWEEP_DEPTHS:
            _name = f"{_act}-{_init}-d{_depth}"
            _SWEEP_VARIANTS[_name] = {"activation": _act, "init": _init, "depth": _depth}
            _SWEEP_GROUPS.setdefault(f"{_act}-{_init}", []).append(_name)

DEPTH_SWEEP = register(
    Experiment(
        name="depth-sweep",
        title="Depth sweep: sigmoid / tanh / ReLU × Glorot / He / orthogonal × depth 2…64",
        config=DepthConfig,
        run=run_mlp,
        variants=_SWEEP_VARIANTS,
        quick={"steps": 100, "n_train": 1024, "n_test": 512, "eval_every": 50},
        metrics=("test_accuracy",),
        summarise=lambda results, config: _depth_rows(
            "depth-sweep", _SWEEP_GROUPS, _SWEEP_VARIANTS, results, config
        ),
    )
)

# Mean-field networks: tanh, σ_b² = 0.05, three σ_w² in the ordered phase (the gradient's
# mean square shrinks by χ1 < 1 per layer, ξ_c = ξ = −1/ln χ1) and σ_w² = 4 in the chaotic
# phase (c* < 1, ξ_c = −1/ln χ_c): Schoenholz et al.'s trainable depth is 6ξ_c in both.
SCALE_SIGMA_W2 = (0.8, 1.0, 1.2, 4.0)
SCALE_SIGMA_B2 = 0.05
#: Depths from 0.5 to 2.2 times 6ξ_c, neighbours at most 15 % apart from 0.5 × 6ξ_c on,
#: so that the deepest trainable depth is measured to within 15 % (the lab's earlier grid,
#: 6 … 72 in steps of up to ×2, gave only bounds).
SCALE_LOW, SCALE_HIGH, SCALE_RATIO, SCALE_DEEPEST = 0.5, 2.2, 1.15, 40
_SCHOENHOLZ = "Schoenholz et al. 2017, Fig. 5"


def six_xi(sigma_w2: float, sigma_b2: float = SCALE_SIGMA_B2) -> float:
    """Mean-field theory's trainable depth 6ξ_c for tanh at (σ_w², σ_b²): the correlation
    depth scale, which in the ordered phase equals the gradient's 1/|ln χ1|."""
    return correlation_depth("tanh", math.sqrt(sigma_w2), math.sqrt(sigma_b2)).trainable_depth


def depth_grid(expected: float) -> tuple[int, ...]:
    """Integer depths from ``SCALE_LOW`` to ``SCALE_HIGH`` times ``expected`` (at least to
    ``SCALE_DEEPEST`` layers, cheap where ``expected`` is small), each the
    largest at most ``SCALE_RATIO`` times the one before (one more where that is itself,
    among the shallowest)."""
    depths = [max(2, round(SCALE_LOW * expected))]
    top = max(SCALE_HIGH * expected, SCALE_DEEPEST)
    while (deeper := max(depths[-1] + 1, math.floor(depths[-1] * SCALE_RATIO))) <= top:
        depths.append(deeper)
    return tuple(depths)


_SCALE_VARIANTS: dict[str, dict[str, object]] = {}
_SCALE_GROUPS: dict[str, list[str]] = {}
for _s2 in SCALE_SIGMA_W2:
    for _depth in depth_grid(six_xi(_s2)):
        _name = f"sw2={_s2:g}-d{_depth}"
        _SCALE_VARIANTS[_name] = {"sigma_w": math.sqrt(_s2), "depth": _depth}
        _SCALE_GROUPS.setdefault(f"tanh σ_w²={_s2:g}", []).append(_name)


DEPTH_SCALE = register(
    Experiment(
        name="depth-scale",
        title="Measured trainable depth of tanh nets at 4 σ_w (3 ordered, 1 chaotic) against "
        "mean-field 6ξ_c",
        config=DepthConfig,
        run=run_mlp,
        variants={
            name: {
                **overrides,
                "activation": "tanh",
                "init": "gaussian",
                "sigma_b": math.sqrt(SCALE_SIGMA_B2),
            }
            for name, overrides in _SCALE_VARIANTS.items()
        },
        quick={"steps": 100, "n_train": 1024, "n_test": 512, "eval_every": 50},
        metrics=("test_accuracy",),
        note="Each σ_w² on its own grid of depths from 0.5 to 2.2 × 6ξ_c (at least to "
        "40 layers), neighbours at "
        "most 15 % apart from 0.5 × 6ξ_c on (the lab's earlier grid 6, 12, 18, 24, 36, 48, "
        "72 bounded the depth within up to ×1.5); the chaotic σ_w² = 4 is new. 500 SGD "
        "steps per network: Schoenholz et al. trained far longer, and the trainable depth "
        "grows with training time.",
        summarise=lambda results, config: _depth_rows(
            "depth-scale",
            _SCALE_GROUPS,
            _SCALE_VARIANTS,
            results,
            config,
            reference={f"tanh σ_w²={s2:g}": six_xi(s2) for s2 in SCALE_SIGMA_W2},
        ),
    )
)
