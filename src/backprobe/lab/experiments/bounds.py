"""What a numeric setting of an experiment may be: one table, by setting name.

Every experiment's config shares these names (``steps`` is a count of steps wherever it
stands), so the range of each is written once; a config class whose setting means more
(the temporal-order task needs ``length`` ≥ 10) narrows it in a ``bounds`` class
attribute. ``--set`` values are checked against them when parsed, before any run starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["BOUNDS", "UNBOUNDED", "Bound", "bounds_of"]


@dataclass(frozen=True)
class Bound:
    """The range ``low … high`` of a number; either end may be open or absent."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        """Whether ``value`` is finite and within the range."""
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        """``> 0``, ``>= 2``, ``in [0, 1)``: what the range reads like in a message."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


POSITIVE = Bound(0, low_open=True)
NON_NEGATIVE = Bound(0)
FRACTION = Bound(0, 1)

#: The range of every numeric setting of the lab's experiment configs, by name.
BOUNDS: dict[str, Bound] = {
    # counts and sizes
    **dict.fromkeys(
        (
            "steps",
            "batch",
            "n_train",
            "n_test",
            "eval_every",
            "record_every",
            "width",
            "hidden",
            "layers",
            "embed",
            "units",
            "points",
            "max_order",
            "count",
            "info",
            "delay",
        ),
        POSITIVE,
    ),
    "depth": NON_NEGATIVE,  # 0: a linear classifier
    "length": Bound(2),  # a sequence with a first and a last step
    "filler": NON_NEGATIVE,
    "warmup": NON_NEGATIVE,
    # optimisation
    "lr": POSITIVE,
    "momentum": Bound(0, 1, high_open=True),
    "clip": NON_NEGATIVE,  # 0: no clipping
    "omega": NON_NEGATIVE,  # 0: no regulariser
    # initialisation and model scales
    "sigma_w": NON_NEGATIVE,
    "sigma_b": NON_NEGATIVE,
    "recurrent_norm": NON_NEGATIVE,
    "spectral_radius": POSITIVE,
    "input_scaling": POSITIVE,
    "ridge": NON_NEGATIVE,
    "leak": Bound(0, 1, low_open=True),
    # fractions and probabilities
    "noise": NON_NEGATIVE,  # a standard deviation
    "test_fraction": Bound(0, 1, low_open=True, high_open=True),
    "trainable_accuracy": FRACTION,
}

#: Numeric settings any finite value suits.
UNBOUNDED = frozenset({"forget_bias"})


def bounds_of(cls: type) -> Mapping[str, Bound]:
    """The bounds of config class ``cls``: :data:`BOUNDS`, narrowed by its ``bounds``."""
    return {**BOUNDS, **getattr(cls, "bounds", {})}
