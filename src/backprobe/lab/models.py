"""Models for the lab: a plain multilayer perceptron of any depth, activation and init.

The seeds' "short" and "long" networks are the same building block repeated a different
number of times, so one class covers both; activation and initialisation are the two
knobs the seeds (and later chapters) turn to cure a vanishing gradient.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal, get_args

from torch import nn

__all__ = ["ACTIVATIONS", "INITS", "Activation", "DeepMLP", "Init"]

Activation = Literal["sigmoid", "tanh", "relu"]
Init = Literal["default", "xavier", "he", "orthogonal"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
INITS: tuple[str, ...] = get_args(Init)

_ACTIVATION_TYPES: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
}


class DeepMLP(nn.Sequential):
    """``depth`` hidden layers of ``width`` units, each a Linear and an activation.

    Maps x [batch, in_features] to logits [batch, out_features]. The children are named
    so that the probe's layer names read like the seeds' pictures, input → output::

        fc1, act1, fc2, act2, …, fc{depth}, act{depth}, out

    ``fc1`` is Linear(in_features, width), ``fc2 … fc{depth}`` are Linear(width, width)
    and ``out`` is Linear(width, out_features) with no activation (the logits), so the
    model has ``depth + 1`` Linear layers. ``depth=0`` is logistic regression.

    ``init`` sets the weights of every Linear, ``out`` included:

    - ``"default"``: PyTorch's own ``nn.Linear`` init, ``U(±1/√fan_in)`` for weights and
      biases (weight std ``1/√(3·fan_in)``). What a user gets without thinking about it,
      and, with sigmoid, the seeds' vanishing long network.
    - ``"xavier"``: Glorot & Bengio (2010), ``U(±√(6/(fan_in+fan_out)))``, gain 1; keeps
      the signal's variance for activations that are near-linear around 0 (tanh).
    - ``"he"``: He et al. (2015), ``N(0, 2/fan_in)``; the factor 2 makes up for ReLU
      zeroing half of its inputs, so the variance survives any depth on average.
    - ``"orthogonal"``: Saxe et al. (2014), a random orthogonal matrix times the
      activation's gain from ``nn.init.calculate_gain`` (sigmoid 1, tanh 5/3, ReLU √2):
      every singular value equal, so no direction of the signal is shrunk or amplified.

    Biases are zero under every init except ``"default"``.
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        depth: int,
        out_features: int,
        activation: Activation = "relu",
        init: Init = "default",
    ) -> None:
        if activation not in _ACTIVATION_TYPES:
            raise ValueError(f"Expected activation in {ACTIVATIONS}, got {activation!r}.")
        if init not in INITS:
            raise ValueError(f"Expected init in {INITS}, got {init!r}.")
        if depth < 0 or min(in_features, width, out_features) < 1:
            raise ValueError(
                "Expected depth >= 0 and positive in_features, width and out_features, got "
                f"{in_features=}, {width=}, {depth=}, {out_features=}."
            )
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        fan_in = in_features
        for i in range(1, depth + 1):
            layers[f"fc{i}"] = nn.Linear(fan_in, width)
            layers[f"act{i}"] = _ACTIVATION_TYPES[activation]()
            fan_in = width
        layers["out"] = nn.Linear(fan_in, out_features)
        super().__init__(layers)
        self.in_features = in_features
        self.width = width
        self.depth = depth
        self.out_features = out_features
        self.activation = activation
        self.init = init
        self.reset_parameters()

    @property
    def linears(self) -> list[nn.Linear]:
        """The ``depth + 1`` Linear layers, input → output."""
        return [m for m in self if isinstance(m, nn.Linear)]

    def reset_parameters(self) -> None:
        """(Re)draw every weight and bias under ``self.init`` from the global torch RNG;
        seed it (``torch.manual_seed``) for a reproducible model."""
        gain = nn.init.calculate_gain(self.activation)
        for linear in self.linears:
            if self.init == "default":
                linear.reset_parameters()
                continue
            if self.init == "xavier":
                nn.init.xavier_uniform_(linear.weight)
            elif self.init == "he":
                nn.init.kaiming_normal_(linear.weight, mode="fan_in", nonlinearity="relu")
            else:
                nn.init.orthogonal_(linear.weight, gain=gain)
            nn.init.zeros_(linear.bias)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, width={self.width}, {self.activation}, init={self.init}"
