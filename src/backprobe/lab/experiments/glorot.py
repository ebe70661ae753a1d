"""Saturation of a sigmoid network's top hidden layer during training (Glorot & Bengio
2010, Figures 2, 3 and 6).

Four hidden layers on Shapeset-like images, plain SGD on mini-batches of 10, as in the
paper. At every evaluation the activations of each hidden layer over a fixed set of
images (300, as the paper's) are summarised: mean, standard deviation and the 1st and
99th percentiles; they are stored with the run, and :func:`activation_figure` draws them
over training the way the paper does. With the standard init ``U(±1/√fan_in)`` the
sigmoid network's top hidden layer falls to near 0 within the first few thousand
updates and stays there (a plateau) for many times longer before it recovers; tanh and
the normalised init ``U(±√6/√(fan_in + fan_out))`` keep every layer's mean where it was.

The plateau is read from the top hidden layer's mean ``m`` on the fixed images, as a
fraction of the activation's range above its lower bound (``m`` for the sigmoid,
``(m + 1) / 2`` for tanh): the layer is *saturated* from the first evaluation where
that fraction falls below :data:`SATURATED` and *leaves* the plateau at the first later
evaluation where it is back above twice its lowest value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models import DeepMLP, Init
from ..shapeset import shapeset_task
from .base import Expectation, Experiment, RunContext
from .bounds import Bound
from .registry import register
from .sampling import SampledBatches
from .training import Loop, build_optimizer, train

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ...store.view import RunView

__all__ = ["EXIT_FACTOR", "SATURATED", "SaturationConfig", "activation_figure", "run_saturation"]

#: The top layer counts as saturated while its mean sits below this fraction of the
#: activation's range above the lower bound (0.1 for the sigmoid).
SATURATED = 0.1
#: It has left the plateau once its mean is back above this multiple of its lowest.
EXIT_FACTOR = 2.0
#: Each activation's range (lower, upper bound).
_RANGE = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}
#: The summaries stored per hidden layer and evaluation: ``act{i}_{name}``.
LAYER_SUMMARIES = ("mean", "std", "p1", "p99")


@dataclass(frozen=True)
class SaturationConfig:
    """``depth`` hidden layers of ``width`` units on ``image_size``² Shapeset-like images
    (9 classes), trained by plain SGD on mini-batches of ``batch``.

    ``init``: "standard" is ``U(±1/√fan_in)`` for the weights and zero biases (the
    paper's "standard initialization"); "normalised" is ``U(±√6/√(fan_in + fan_out))``
    and zero biases (its "normalized initialization").
    ``n_stats`` fixed test images give the activation statistics; all ``n_test`` the
    accuracy.
    """

    activation: Literal["sigmoid", "tanh"] = "sigmoid"
    init: Literal["standard", "normalised"] = "standard"
    depth: int = 4
    width: int = 128
    image_size: int = 16
    lr: float = 0.1
    batch: int = 10
    steps: int = 60_000
    n_train: int = 20_000
    n_test: int = 1_000
    n_stats: int = 300
    eval_every: int = 500
    record_every: int = 500

    bounds: ClassVar[dict[str, Bound]] = {"image_size": Bound(4), "n_stats": Bound(1)}


def _model(config: SaturationConfig, n_features: int, n_classes: int) -> DeepMLP:
    """The configured network; the global torch RNG draws its weights."""
    init: Init = "xavier" if config.init == "normalised" else "default"
    model = DeepMLP(n_features, config.width, config.depth, n_classes, config.activation, init)
    with torch.no_grad():
        for linear in model.linears:  # torch's default is U(±1/√fan_in) for biases too
            linear.bias.zero_()
    return model


def hidden_activations(model: DeepMLP, x: torch.Tensor) -> list[torch.Tensor]:
    """Each hidden layer's output for the batch ``x``: ``depth`` tensors [n, width]."""
    out = []
    h = x
    for module in list(model)[:-1]:
        h = module(h)
        if not isinstance(module, nn.Linear):
            out.append(h)
    return out


class _Plateau:
    """The top hidden layer's plateau, updated at every evaluation (see the module)."""

    def __init__(self, activation: str) -> None:
        self.lower, upper = _RANGE[activation]
        self.span = upper - self.lower
        self.low = math.inf
        self.saturated_at = math.nan
        self.left_at = math.nan

    def update(self, step: int, mean: float) -> dict[str, float]:
        level = (mean - self.lower) / self.span
        self.low = min(self.low, level)
        saturated = not math.isnan(self.saturated_at)
        if not saturated and level < SATURATED:
            self.saturated_at = step
        elif saturated and math.isnan(self.left_at) and level >= EXIT_FACTOR * self.low:
            self.left_at = step
        if math.isnan(self.saturated_at):
            plateau = 0.0
        else:
            end = step if math.isnan(self.left_at) else self.left_at
            plateau = end - self.saturated_at
        return {
            "top_mean_low": self.low,
            "saturation_step": self.saturated_at,
            "exit_step": self.left_at,
            "plateau_steps": plateau,
            # How much longer the plateau lasts than the fall into it took.
            "plateau_ratio": plateau / max(self.saturated_at, 1.0) if plateau else 0.0,
        }


def run_saturation(config: SaturationConfig, ctx: RunContext) -> dict[str, float]:
    """Train the configured network; the activation statistics of every hidden layer at
    every evaluation, the plateau of the top one, the test accuracy."""
    task = shapeset_task(config.n_train, config.n_test, config.image_size, seed=ctx.seed)
    model = _model(config, task.n_features, task.n_classes)
    optimizer = build_optimizer("sgd", model.parameters(), config.lr, 0.0)
    batch = SampledBatches(task.x_train, task.y_train, config.steps, config.batch, ctx.seed)
    stats_x = task.x_test[: config.n_stats]
    plateau = _Plateau(config.activation)
    first_std = math.nan

    def evaluate() -> dict[str, float]:
        nonlocal first_std
        metrics: dict[str, float] = {}
        layers = hidden_activations(model, stats_x)
        for i, h in enumerate(layers, start=1):
            q = torch.quantile(h.flatten(), torch.tensor([0.01, 0.99]))
            values = (h.mean(), h.std(), q[0], q[1])
            for name, value in zip(LAYER_SUMMARIES, values, strict=True):
                metrics[f"act{i}_{name}"] = float(value)
        metrics.update(plateau.update(batch.step, metrics[f"act{config.depth}_mean"]))
        if math.isnan(first_std):  # at initialisation: Glorot & Bengio's Figure 6
            first_std = metrics[f"act{config.depth}_std"] / metrics["act1_std"]
        metrics["init_std_ratio"] = first_std
        accuracy = (model(task.x_test).argmax(1) == task.y_test).float().mean()
        metrics["test_accuracy"] = float(accuracy)
        return metrics

    loop = Loop(config.steps, config.eval_every, config.record_every)
    metrics = train(model, ctx, loop, optimizer, batch, F.cross_entropy, evaluate)
    return {**metrics, "chance": task.chance}


def activation_figure(runs: Mapping[str, RunView]) -> Figure:
    """The activations of each hidden layer over training, one panel per run (``runs``:
    variant, or a panel title, → a stored run of :func:`run_saturation`): the mean as a
    line with the standard deviation as vertical bars (Glorot & Bengio's Figure 2) and the
    1st and 99th percentiles as markers (their Figure 3)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(runs), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(runs), sharey=False, squeeze=False)[0]
    for ax, (title, run) in zip(axes, runs.items(), strict=True):
        depth = 0
        while f"act{depth + 1}_mean" in run.scalar_names:
            depth += 1
        colours = colormaps["viridis"](np.linspace(0.0, 0.85, depth))
        for i in range(1, depth + 1):
            series = {s: run.history(f"act{i}_{s}") for s in LAYER_SUMMARIES}
            kept = np.isfinite(series["mean"])
            steps = run.steps[kept] / 1000.0
            mean, std = series["mean"][kept], series["std"][kept]
            bars = slice(i - 1, None, max(1, len(steps) // 12))  # layers' bars interleaved
            ax.plot(steps, mean, color=colours[i - 1], label=f"layer {i}")
            ax.errorbar(
                steps[bars],
                mean[bars],
                yerr=std[bars],
                fmt="none",
                ecolor=colours[i - 1],
                capsize=2,
            )
            for s in ("p1", "p99"):
                ax.plot(steps[bars], series[s][kept][bars], "x", ms=3, color=colours[i - 1])
        ax.set_title(_TITLES.get(title, title), fontsize="medium")
        ax.set_xlabel("training step (thousands)")
    axes[0].set_ylabel("activation: mean ± std, × p1 / p99")
    axes[0].legend(fontsize="small")
    return fig


_PAPER = "Glorot & Bengio 2010"
#: Panel titles of :func:`activation_figure` by variant.
_TITLES = {
    "sigmoid-standard": "sigmoid, standard init",
    "tanh-standard": "tanh, standard init",
    "tanh-normalised": "tanh, normalised init",
    "sigmoid-normalised": "sigmoid, normalised init",
}
SATURATION = register(
    Experiment(
        name="saturation",
        title="Sigmoid's top hidden layer saturates near 0 and recovers slowly; tanh and "
        "normalised init do not (Glorot & Bengio 2010)",
        config=SaturationConfig,
        run=run_saturation,
        variants={
            "sigmoid-standard": {},
            "tanh-standard": {"activation": "tanh"},
            "tanh-normalised": {"activation": "tanh", "init": "normalised"},
            "sigmoid-normalised": {"init": "normalised"},
        },
        quick={
            "width": 32,
            "lr": 1.0,
            "steps": 800,
            "n_train": 1000,
            "n_test": 300,
            "eval_every": 100,
            "record_every": 100,
        },
        metrics=(
            "top_mean_low",
            "plateau_steps",
            "plateau_ratio",
            "exit_step",
            "init_std_ratio",
            "test_accuracy",
        ),
        missing={"exit_step": "none (never saturated, or saturated to the end)"},
        figure=activation_figure,
        caption="Each hidden layer's activations on 300 fixed test images over training, "
        "seed 0, drawn as Glorot & Bengio's Figures 2 and 3: the mean as a line, the "
        "standard deviation as bars, the 1st and 99th percentiles as crosses. With sigmoid "
        "and the standard init the top layer (layer 4) falls to 0 at once and stays there "
        "for most of training; tanh's layers stay centred on 0.",
        expect={
            "sigmoid-standard": [
                Expectation("top_mean_low", "<", SATURATED, f"{_PAPER}, Fig. 2"),
                Expectation("plateau_ratio", ">", 5.0, f"{_PAPER}, Fig. 2"),
            ],
            "tanh-standard": [
                Expectation("top_mean_low", ">", 0.3, f"{_PAPER}, Fig. 3"),
                Expectation("init_std_ratio", "<", 0.5, f"{_PAPER}, Fig. 6"),
            ],
            "tanh-normalised": [
                Expectation("top_mean_low", ">", 0.3, f"{_PAPER}, Fig. 3"),
                Expectation("init_std_ratio", ">", 0.5, f"{_PAPER}, Fig. 6"),
            ],
        },
    )
)
