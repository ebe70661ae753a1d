"""Dynamical isometry: orthogonal tanh networks at criticality keep their input–output
Jacobian well conditioned at any depth and train faster (Pennington, Schoenholz &
Ganguli 2017, Figures 3 and 4).

Each run is one ensemble (tanh or ReLU, orthogonal or Gaussian weights of variance
σ_w²/fan_in, biases of variance σ_b²) at criticality: χ1 = 1, σ_w² = 1.05 and
σ_b² = 2.01·10⁻⁵ for tanh (where the fixed point q* ≈ 0.026 is small and tanh nearly
linear), σ_w² = 2 for ReLU. It measures two things:

* the singular values of the end-to-end Jacobian ∂x^L/∂x^0 of networks of
  ``spectrum_width`` units and depth L = 1, 2, 4, … up to ``spectrum_depth``, at
  initialisation, exactly (the whole Jacobian,
  :func:`~backprobe.theory.jacobian.jacobian_singular_values`), at inputs whose first
  pre-activations have variance ``q_in``; their largest, σ_max, against depth is the
  paper's Figure 3;
* the learning speed of one network of ``depth`` hidden layers of ``width`` units,
  trained by SGD on the teacher task: the number of steps until its test accuracy
  reaches ``target_accuracy``, and its learning curve (their Figure 4).

:func:`isometry_figure` draws both from the stored runs; the results table compares each
ensemble's steps with the orthogonal tanh network's, seed by seed
(:func:`speed_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...theory.jacobian import jacobian_singular_values
from ..models import DeepMLP
from ..tasks import classification_task
from .base import Expectation, Experiment, PerSeed, Row, RunContext, failing_seeds
from .bounds import Bound
from .feedforward import gaussian_init_
from .registry import register
from .sampling import SampledBatches
from .training import Loop, build_optimizer, train

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ...store.view import RunView

__all__ = [
    "ENSEMBLES",
    "IsometryConfig",
    "isometry_figure",
    "orthogonal_init_",
    "run_isometry",
    "spectrum_depths",
    "speed_rows",
]

#: tanh at criticality with a small q*: the paper's σ_w² = 1.05, σ_b² = 2.01e-5.
TANH_SIGMA_W2 = 1.05
TANH_SIGMA_B2 = 2.01e-5
#: The fixed point q* of tanh there (mean-field theory), the default input variance.
TANH_Q_STAR = 0.0259


@dataclass(frozen=True)
class IsometryConfig:
    """One ensemble of networks at criticality.

    ``weights``: "orthogonal" draws each weight matrix as σ_w times a random orthogonal
    (semi-orthogonal where not square) matrix, "gaussian" as N(0, σ_w²/fan_in); biases
    are N(0, σ_b²) in both. Inputs are scaled so that the first pre-activations have
    variance ``q_in`` (tanh's q* by default).

    Jacobians: networks of ``spectrum_width`` units and depth 1, 2, 4, … up to
    ``spectrum_depth``; ``spectrum_nets`` networks per depth, at ``spectrum_inputs``
    inputs each. Training: ``depth`` hidden layers of ``width`` units (depth/width = 1/2,
    the paper's 200/400) on the teacher task (``n_features`` inputs, ``n_classes``
    classes), SGD on mini-batches of ``batch``, test accuracy every ``eval_every`` steps.
    """

    activation: Literal["tanh", "relu"] = "tanh"
    weights: Literal["orthogonal", "gaussian"] = "orthogonal"
    sigma_w2: float = TANH_SIGMA_W2
    sigma_b2: float = TANH_SIGMA_B2
    q_in: float = TANH_Q_STAR
    spectrum_width: int = 256
    spectrum_depth: int = 128
    spectrum_nets: int = 2
    spectrum_inputs: int = 4
    width: int = 128
    depth: int = 64
    n_features: int = 16
    n_classes: int = 4
    lr: float = 0.003
    batch: int = 32
    steps: int = 1000
    n_train: int = 4096
    n_test: int = 512
    target_accuracy: float = 0.7
    eval_every: int = 10
    record_every: int = 50

    bounds: ClassVar[dict[str, Bound]] = {
        "sigma_w2": Bound(0, low_open=True),
        "sigma_b2": Bound(0),
        "q_in": Bound(0, low_open=True),
        "spectrum_width": Bound(1),
        "spectrum_depth": Bound(1),
        "spectrum_nets": Bound(1),
        "spectrum_inputs": Bound(1),
        "depth": Bound(1),
        "n_features": Bound(1),
        "n_classes": Bound(2),
        "target_accuracy": Bound(0, 1),
    }


@torch.no_grad()
def orthogonal_init_(model: DeepMLP, sigma_w: float, sigma_b: float) -> None:
    """W = σ_w · (a random orthogonal matrix) and b ~ N(0, σ_b²) for every Linear: every
    singular value of W is σ_w (Saxe et al. 2014; Pennington et al. 2017)."""
    for linear in model.linears:
        nn.init.orthogonal_(linear.weight, gain=sigma_w)
        linear.bias.normal_(0.0, sigma_b)


def _network(config: IsometryConfig, n_in: int, width: int, depth: int, n_out: int) -> DeepMLP:
    """A network of the configured ensemble; the global torch RNG draws it."""
    model = DeepMLP(n_in, width, depth, n_out, config.activation)
    init = orthogonal_init_ if config.weights == "orthogonal" else gaussian_init_
    init(model, math.sqrt(config.sigma_w2), math.sqrt(config.sigma_b2))
    return model


def _input_scale(config: IsometryConfig) -> float:
    """The factor that gives N(0, I) inputs first pre-activations of variance ``q_in``
    (σ_w²·s² + σ_b² = q_in); a q_in below σ_b² is reached with s = 0."""
    return math.sqrt(max(config.q_in - config.sigma_b2, 0.0) / config.sigma_w2)


def spectrum_depths(depth: int) -> list[int]:
    """The depths whose Jacobian spectra a run measures: 1, 2, 4, … below ``depth``, and
    ``depth``."""
    return [2**k for k in range(depth.bit_length()) if 2**k < depth] + [depth]


def jacobian_spectra(config: IsometryConfig, depth: int) -> np.ndarray:
    """The singular values of ∂x^L/∂x^0 for ``spectrum_nets`` fresh networks of
    ``depth`` layers of ``spectrum_width`` units at ``spectrum_inputs`` inputs each:
    float64 [nets·inputs, spectrum_width]."""
    rows = []
    n = config.spectrum_width
    for _ in range(config.spectrum_nets):
        net = _network(config, n, n, depth, 1)
        trunk = nn.Sequential(*list(net)[:-1]).eval()  # x^0 → x^L, without the readout
        x = torch.randn(config.spectrum_inputs, n) * _input_scale(config)
        rows.append(jacobian_singular_values(trunk, x))
    return np.concatenate(rows)


def run_isometry(config: IsometryConfig, ctx: RunContext) -> dict[str, float]:
    """The Jacobian spectra of the ensemble against depth, then the learning speed of
    one network of ``depth`` layers; see the module."""
    spectra: dict[str, float] = {}
    for depth in spectrum_depths(config.spectrum_depth):
        s = jacobian_spectra(config, depth)
        spectra[f"sigma_max_d{depth}"] = float(s.max(axis=1).mean())
        spectra[f"sv_variance_d{depth}"] = float(np.var(s**2))
    spectra["sigma_max"] = spectra[f"sigma_max_d{config.spectrum_depth}"]
    spectra["sv_variance"] = spectra[f"sv_variance_d{config.spectrum_depth}"]

    task = classification_task(
        n_train=config.n_train,
        n_test=config.n_test,
        n_features=config.n_features,
        n_classes=config.n_classes,
        seed=ctx.seed,
        teacher_width=config.n_features,
    )
    scale = _input_scale(config)
    x_train, x_test = task.x_train * scale, task.x_test * scale
    model = _network(config, config.n_features, config.width, config.depth, config.n_classes)
    optimizer = build_optimizer("sgd", model.parameters(), config.lr, 0.0)
    batch = SampledBatches(x_train, task.y_train, config.steps, config.batch, ctx.seed)
    reached = math.nan

    def evaluate() -> dict[str, float]:
        nonlocal reached
        accuracy = float((model(x_test).argmax(1) == task.y_test).float().mean())
        if math.isnan(reached) and accuracy >= config.target_accuracy:
            reached = batch.step
        return {
            **spectra,
            "test_accuracy": accuracy,
            # Not reached: the whole budget, a lower bound.
            "steps_to_target": config.steps if math.isnan(reached) else reached,
            "reached_target": float(not math.isnan(reached)),
        }

    loop = Loop(config.steps, config.eval_every, config.record_every)
    metrics = train(model, ctx, loop, optimizer, batch, F.cross_entropy, evaluate)
    return {**metrics, "chance": task.chance}


#: (activation, weights) of each variant.
ENSEMBLES = {
    "tanh-orthogonal": ("tanh", "orthogonal"),
    "tanh-gaussian": ("tanh", "gaussian"),
    "relu-orthogonal": ("relu", "orthogonal"),
    "relu-gaussian": ("relu", "gaussian"),
}
#: The paper's Figure 4 styles: tanh blue, ReLU black; orthogonal solid, Gaussian dashed.
_COLOUR = {"tanh": "tab:blue", "relu": "black"}
_LINE = {"orthogonal": "-", "gaussian": "--"}


def isometry_figure(runs: Mapping[str, RunView]) -> Figure:
    """σ_max of the Jacobian against depth (left, Pennington et al.'s Figure 3) and the
    test accuracy over training (right, their Figure 4), one line per ensemble.

    ``runs``: variant (a key of :data:`ENSEMBLES`) → a stored run of
    :func:`run_isometry`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    spectrum, learning = fig.subplots(1, 2)
    for variant, run in runs.items():
        activation, weights = ENSEMBLES[variant]
        style = {"color": _COLOUR[activation], "linestyle": _LINE[weights], "label": variant}
        depths = sorted(
            int(name.removeprefix("sigma_max_d"))
            for name in run.scalar_names
            if name.startswith("sigma_max_d")
        )
        smax = [float(np.nanmax(run.history(f"sigma_max_d{d}"))) for d in depths]
        spectrum.plot(depths, smax, marker="o", ms=3, **style)
        accuracy = run.history("test_accuracy")
        kept = np.isfinite(accuracy)
        learning.plot(run.steps[kept], accuracy[kept], **style)
    spectrum.set_xscale("log", base=2)
    spectrum.set_yscale("log")
    spectrum.set_xlabel("depth L")
    spectrum.set_ylabel("σ_max of the input–output Jacobian")
    spectrum.legend(fontsize="small")
    learning.set_xlabel("SGD step")
    learning.set_ylabel("test accuracy")
    return fig


_PAPER = "Pennington et al. 2017"
#: The ensemble the others' learning speed is compared with.
_FASTEST = "tanh-orthogonal"


def _by_seed(values: Sequence[float]) -> dict[int, float]:
    """Seed → value, from PerSeed values (or a plain sequence: seeds 0, 1, …)."""
    return values.by_seed() if isinstance(values, PerSeed) else dict(enumerate(values))


def speed_rows(results: Mapping[str, Mapping[str, Sequence[float]]]) -> list[Row]:
    """For each other ensemble, its steps to the target accuracy over the orthogonal tanh
    network's, seed by seed; the paper's direction: above 1 (it trains slower). A run
    that never reached the target counts its whole budget, so its ratio is a lower
    bound."""
    if "steps_to_target" not in results.get(_FASTEST, {}):
        return []
    fastest = _by_seed(results[_FASTEST]["steps_to_target"])
    rows = []
    for variant in ENSEMBLES:
        if variant == _FASTEST or "steps_to_target" not in results.get(variant, {}):
            continue
        other = _by_seed(results[variant]["steps_to_target"])
        seeds = tuple(sorted(set(fastest) & set(other)))
        values = tuple(other[s] / max(fastest[s], 1.0) for s in seeds)
        reached = _by_seed(results[variant].get("reached_target", ()))
        short = [s for s in seeds if reached.get(s) == 0.0]
        note = (
            f"a lower bound: {variant} never reached the target on "
            f"seed{'s' if len(short) > 1 else ''} {', '.join(map(str, short))}"
            if short
            else ""
        )
        rows.append(
            Row(
                "isometry",
                f"{variant} / {_FASTEST}",
                "steps_to_target ratio",
                values,
                seeds,
                reference=f"> 1 ({_PAPER}, Fig. 4)",
                failing=failing_seeds(values, seeds, lambda v: v > 1.0),
                note=note,
            )
        )
    return rows


_RELU = {"activation": "relu", "sigma_w2": 2.0}
_WIDE = Expectation("sigma_max", ">", 4.0, f"{_PAPER}, Fig. 3")
ISOMETRY = register(
    Experiment(
        name="isometry",
        title="Orthogonal tanh at criticality keeps the Jacobian well conditioned with depth "
        "and trains faster than Gaussian tanh or ReLU (Pennington et al. 2017)",
        config=IsometryConfig,
        run=run_isometry,
        variants={
            "tanh-orthogonal": {},
            "tanh-gaussian": {"weights": "gaussian"},
            "relu-orthogonal": _RELU,
            "relu-gaussian": {**_RELU, "weights": "gaussian"},
        },
        quick={
            "spectrum_width": 64,
            "spectrum_depth": 32,
            "spectrum_nets": 1,
            "width": 64,
            "depth": 64,
            "steps": 200,
            "n_test": 256,
        },
        metrics=("steps_to_target", "sigma_max", "sv_variance", "test_accuracy"),
        expect={
            "tanh-orthogonal": [Expectation("sigma_max", "<", 2.0, f"{_PAPER}, Fig. 3")],
            "tanh-gaussian": [_WIDE],
            "relu-orthogonal": [_WIDE],
            "relu-gaussian": [_WIDE],
        },
        summarise=lambda results, config: speed_rows(results),
        figure=isometry_figure,
        caption="Seed 0, drawn as Pennington et al.'s Figures 3 and 4: left, σ_max of the "
        "input–output Jacobian against depth (the mean over random networks); right, the "
        "test accuracy of the depth-64 networks over training. Only orthogonal tanh at "
        "criticality keeps σ_max near 1, and it learns first.",
        note="Networks of width 256 up to depth 128 for the Jacobian (the paper's theory is "
        "for infinite width), and one network of depth 64 and width 128 trained for 1000 "
        "SGD steps on the 4-class teacher task (the paper: depth 200, width 400, "
        "CIFAR-10), with one learning rate, 0.003, for every ensemble.",
    )
)
