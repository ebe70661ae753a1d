"""A zoo of small models: planted pathologies, each with the finding it must produce, and
healthy models that must produce nothing above ``info``.

Every entry is examined by ``bp.check`` at initialisation (``scenario="check"``) or by a
short seeded training run with a probe in memory (``scenario="train"``), then the
findings are compared with what was planted. ``also`` lists the kinds that follow from
the planted cause (a dead layer also starves the layers below it of gradient); any
other finding at warning or above counts as a false positive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import backprobe as bp
from backprobe.lab.models import DeepMLP


@dataclass(frozen=True)
class Entry:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    scenario: str = "check"  # "check" or "train"
    expected: str | None = None  # the planted kind; None for a healthy model
    place: Callable[[bp.Finding], bool] = lambda f: True
    also: tuple[str, ...] = ()
    train: dict = field(default_factory=dict)  # steps, lr, optimizer for "train"


def _mlp(act: str, depth: int, init: str = "he", scale: float = 1.0, width: int = 32):
    def build() -> nn.Module:
        model = DeepMLP(16, width, depth, 4, activation=act, init=init)
        with torch.no_grad():
            for lin in model.linears:
                lin.weight.mul_(scale)
        return model

    return build


def _tweak(build: Callable[[], nn.Module], edit: Callable[[nn.Module], None]):
    def wrapped() -> nn.Module:
        model = build()
        with torch.no_grad():
            edit(model)
        return model

    return wrapped


def _layers(*names: str, absent: tuple[str, ...] = ()) -> Callable[[bp.Finding], bool]:
    """The finding's layers include every name in ``names`` and none of ``absent``."""

    def ok(f: bp.Finding) -> bool:
        layers = set(f.where.get("layers", []))
        return set(names) <= layers and not (set(absent) & layers)

    return ok


def _nonfinite_at(layer: str, phase: str) -> Callable[[bp.Finding], bool]:
    def ok(f: bp.Finding) -> bool:
        return f.evidence.get("layer") == layer and f.evidence.get("phase") == phase

    return ok


class SqrtUnit(nn.Module):
    """√(max(x, 0))·scale written with ``torch.where``: a finite forward, but a NaN
    gradient wherever x ≤ 0 (√'(0) = inf reaches the branch ``x·0``: inf·0 = NaN), the
    classic pitfall of masking with ``where``."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, x * 0).sqrt() * self.scale


def _sqrt_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), SqrtUnit(), nn.Linear(32, 4)
    )


class Recurrent(nn.Module):
    """An ``nn.RNN``/``LSTM``/``GRU`` over [B, T, 8] and a linear read-out of h_T."""

    def __init__(self, kind: str = "rnn", scale: float | None = None, nonlinearity="tanh"):
        super().__init__()
        extra = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
        self.rnn = getattr(nn, kind.upper())(8, 32, batch_first=True, **extra)
        if scale is not None:
            with torch.no_grad():
                q, _ = torch.linalg.qr(torch.randn(32, 32))
                self.rnn.weight_hh_l0.copy_(scale * q)
        self.out = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.out(y[:, -1])


class ResidualMLP(nn.Module):
    """Pre-norm residual blocks x + W2·relu(W1·LN(x))."""

    def __init__(self, width: int = 32, blocks: int = 6) -> None:
        super().__init__()
        self.inp = nn.Linear(16, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)
            )
            for _ in range(blocks)
        )
        self.out = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class TransformerBlock(nn.Module):
    """One encoder layer over [B, T, 32] and a mean-pooled read-out."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.TransformerEncoderLayer(
            32, 4, dim_feedforward=64, dropout=0.0, batch_first=True
        )
        self.out = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(x).mean(dim=1))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


def _set(param: str, value: float, index: tuple | None = None):
    def edit(model: nn.Module) -> None:
        tensor = model.get_parameter(param)
        if index is None:
            tensor.fill_(value)
        else:
            tensor[index] = value

    return edit


PATHOLOGIES: tuple[Entry, ...] = (
    Entry(
        "deep sigmoid (default init)",
        _mlp("sigmoid", 20, init="default"),
        (32, 16),
        expected="vanishing",
        place=_layers("fc1", absent=("out",)),
        also=("initialisation",),
    ),
    Entry(
        "tiny init (He × 0.1, ReLU)",
        _mlp("relu", 10, scale=0.1),
        (32, 16),
        expected="vanishing",
        place=_layers("fc1", absent=("out",)),
        also=("initialisation",),
    ),
    Entry(
        "huge init (He × 3, ReLU)",
        _mlp("relu", 10, scale=3.0),
        (32, 16),
        expected="exploding",
        place=_layers("fc1", absent=("out",)),
        also=("initialisation",),
    ),
    Entry(
        "mean field off the edge (tanh, σ_w = 0.5)",
        _mlp("tanh", 12, init="orthogonal", scale=0.5 * 3 / 5),
        (32, 16),
        expected="initialisation",
        also=("vanishing",),
    ),
    Entry(
        "dead ReLUs from a bias of −10 at fc3",
        _tweak(_mlp("relu", 6), _set("fc3.bias", -10.0)),
        (32, 16),
        expected="dead_units",
        place=lambda f: f.where["layers"][0] == "act3",
        also=("vanishing",),
    ),
    Entry(
        "saturated tanh (weights × 8)",
        _mlp("tanh", 6, init="xavier", scale=8.0),
        (32, 16),
        expected="saturation",
        place=_layers("act2", "act3"),
        also=("vanishing", "exploding", "initialisation"),
    ),
    Entry(
        "exploding at layer fc4 (weights × 1e4)",
        _tweak(_mlp("relu", 6), lambda m: m.get_submodule("fc4").weight.mul_(1e4)),
        (32, 16),
        expected="exploding",
        place=_layers("fc1", "fc3", absent=("fc5", "out")),
        also=("initialisation",),
    ),
    Entry(
        "vanishing RNN (λ1(W_hh) = 0.3, T = 50)",
        lambda: Recurrent("rnn", scale=0.3),
        (16, 50, 8),
        expected="vanishing_through_time",
        place=_layers("rnn"),
    ),
    Entry(
        "exploding RNN (ReLU, λ1(W_hh) = 2, T = 30)",
        lambda: Recurrent("rnn", scale=2.0, nonlinearity="relu"),
        (16, 30, 8),
        expected="exploding_through_time",
        place=_layers("rnn"),
        also=("exploding",),
    ),
    Entry(
        "NaN weight injected at fc4",
        _tweak(_mlp("relu", 6), _set("fc4.weight", float("nan"), (0, 0))),
        (32, 16),
        expected="nonfinite",
        place=_nonfinite_at("fc4", "forward"),
    ),
    Entry(
        "NaN gradient of √ behind torch.where (after layer 2)",
        _sqrt_mlp,
        (32, 16),
        expected="nonfinite",
        place=_nonfinite_at("2", "backward"),
    ),
    Entry(
        "learning rate far too high (SGD lr = 3)",
        _mlp("relu", 4),
        (32, 16),
        scenario="train",
        expected="learning_rate",
        also=("nonfinite", "exploding", "dead_units"),
        train={"steps": 12, "lr": 3.0},
    ),
    Entry(
        "learning rate far too low (SGD lr = 1e-7)",
        _mlp("relu", 4),
        (32, 16),
        scenario="train",
        expected="learning_rate",
        train={"steps": 6, "lr": 1e-7},
    ),
    Entry(
        "loss plateau, starving early layers (deep sigmoid)",
        _mlp("sigmoid", 12, init="default"),
        (32, 16),
        scenario="train",
        expected="plateau",
        place=_layers("fc1"),
        also=("vanishing", "initialisation"),
        train={"steps": 16, "lr": 0.05},
    ),
)

HEALTHY: tuple[Entry, ...] = (
    Entry("ReLU + He MLP", _mlp("relu", 10), (32, 16)),
    Entry("ReLU + He MLP, trained", _mlp("relu", 10), (32, 16), "train", train={"lr": 0.05}),
    Entry("tanh, orthogonal (χ1 = 1)", _mlp("tanh", 10, init="orthogonal", scale=3 / 5), (32, 16)),
    Entry("residual MLP", ResidualMLP, (32, 16)),
    Entry(
        "residual MLP, trained (Adam)",
        ResidualMLP,
        (32, 16),
        "train",
        train={"lr": 1e-3, "optimizer": "adam"},
    ),
    Entry("LSTM, T = 5", lambda: Recurrent("lstm"), (16, 5, 8)),
    Entry("GRU, T = 5, trained", lambda: Recurrent("gru"), (16, 5, 8), "train", train={"lr": 0.1}),
    Entry("transformer block", TransformerBlock, (8, 6, 32)),
    Entry(
        "transformer block, trained (Adam)",
        TransformerBlock,
        (8, 6, 32),
        "train",
        train={"lr": 1e-3, "optimizer": "adam"},
    ),
    Entry("CNN", _cnn, (8, 3, 16, 16)),
    Entry("CNN, trained", _cnn, (8, 3, 16, 16), "train", train={"lr": 0.05}),
)


def examine(entry: Entry, seed: int = 0) -> list[bp.Finding]:
    """The findings for one zoo entry (seeded)."""
    torch.manual_seed(seed)
    model = entry.build()
    if entry.scenario == "check":
        return list(bp.check(model, input_shape=entry.input_shape, seed=seed))
    return _train(model, entry, seed)


def _train(model: nn.Module, entry: Entry, seed: int) -> list[bp.Finding]:
    """A few steps of cross-entropy on a fixed learnable task (the class is the sign
    pattern of two input features), with a probe in memory."""
    opts = {"steps": 10, "optimizer": "sgd", **entry.train}
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(entry.input_shape, generator=gen)
    flat = x.reshape(x.shape[0], -1)
    y = (flat[:, 0] > 0).long() * 2 + (flat[:, 1] > 0).long()
    cls = torch.optim.Adam if opts["optimizer"] == "adam" else torch.optim.SGD
    opt = cls(model.parameters(), lr=opts["lr"])
    probe = bp.Probe(model, db=None, time_every=1)
    with probe:
        for _ in range(opts["steps"]):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            probe.step(loss)
            opt.step()
            opt.zero_grad()
    return bp.findings(probe, lr=opts["lr"], optimizer=opts["optimizer"])


def significant(findings: list[bp.Finding]) -> list[bp.Finding]:
    return [f for f in findings if f.severity_rank >= 1]
