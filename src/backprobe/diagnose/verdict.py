"""A one-line verdict on a recorded step: healthy, vanishing, exploding or non-finite.

It compares the parameter-gradient norm of each layer with that of the layer nearest the
output: the chain rule multiplies local derivatives on the way back (the seeds'
``d1 · d2 · …``), so a product of small factors starves the early layers and a product
of large ones blows them up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .._format import compact_number
from ..store.view import RunView

Status = Literal["healthy", "vanishing", "exploding", "nonfinite", "unknown"]


@dataclass(frozen=True)
class Thresholds:
    """When the verdict calls a gradient profile unhealthy.

    A layer *starves* when its gradient norm is below ``vanishing_ratio`` times that of
    the last layer, and *explodes* when above ``exploding_ratio`` times it; the network
    is vanishing (exploding) when its first layer does.
    """

    vanishing_ratio: float = 1e-3
    exploding_ratio: float = 1e3


@dataclass(frozen=True)
class Verdict:
    """The verdict on one step. ``layer`` is where the problem reaches up to (vanishing,
    exploding) or starts (non-finite); ``ratio`` is first / last layer gradient norm."""

    status: Status
    step: int
    message: str
    layer: int | None = None
    ratio: float | None = None

    def __str__(self) -> str:
        return self.message


def format_ratio(ratio: float) -> str:
    """Ratios span dozens of decades: ``3e-9``, ``0.42``, ``0 (underflow)``."""
    if ratio == 0:
        return "0 (underflow)"
    return compact_number(ratio, significant=2, exponent_decimals=0)


def verdict(run: RunView, step: int | None = None, thresholds: Thresholds | None = None) -> Verdict:
    """The verdict on a recorded step of ``run`` (a Probe or a stored run); default: the
    last recorded step."""
    t = thresholds or Thresholds()
    row = run.step_index(step)
    at = int(run.steps[row])
    names = run.layers
    layer, phase = (int(v) for v in run.history("first_nonfinite")[row])
    grad = run.history("grad_norm")[row]
    if layer >= 0:
        where = "forward output" if phase == 0 else "gradient"
        return Verdict(
            "nonfinite",
            at,
            f"non-finite at step {at} in layer {layer} "
            f"({names[layer]}): first NaN/inf in its {where}",
            layer=layer,
        )
    overflow = np.flatnonzero(np.isinf(grad))
    if overflow.size:
        # The hooks saw only finite values, yet a norm overflowed float32: the gradient
        # is finite but beyond 1e19 per element, which is exploding by any standard.
        first = int(overflow[0])
        return Verdict(
            "exploding",
            at,
            f"exploding at step {at}: the gradient norm of layer {first} ({names[first]}) "
            "overflows float32",
            layer=first,
        )
    measured = np.flatnonzero(np.isfinite(grad))
    if measured.size < 2:
        return Verdict(
            "unknown",
            at,
            f"step {at}: fewer than two layers with parameter gradients; nothing to compare",
        )
    reference = grad[measured[-1]]
    if reference <= 0:
        return Verdict(
            "unknown", at, f"step {at}: the last layer's gradient is zero (is the loss constant?)"
        )
    relative = grad[measured] / reference
    ratio = float(relative[0])
    checks: tuple[tuple[Status, np.ndarray], ...] = (
        ("vanishing", relative < t.vanishing_ratio),
        ("exploding", relative > t.exploding_ratio),
    )
    for status, bad in checks:
        if bad[0]:
            # the last layer of the unbroken run of bad layers that starts at the input
            run_length = bad.size if bad.all() else int(np.argmin(bad))
            reach = int(measured[run_length - 1])
            direction = "down" if status == "vanishing" else "down, growing toward the input"
            return Verdict(
                status,
                at,
                f"{status} from layer {reach} ({names[reach]}) "
                f"{direction}: first/last gradient ratio {format_ratio(ratio)}",
                layer=reach,
                ratio=ratio,
            )
    return Verdict(
        "healthy", at, f"healthy: first/last gradient ratio {format_ratio(ratio)}", ratio=ratio
    )
