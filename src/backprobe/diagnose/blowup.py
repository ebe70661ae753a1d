"""Exploding during training: the total gradient norm grew by orders of magnitude over
the recorded steps, or overflowed.

An overflow leaves a trail that other rules misread: weights blown up saturate every
unit, so later steps underflow to 0 (a first/last ratio of 0 looks like vanishing), or
turn NaN. This rule finds the blow-up itself: the total parameter-gradient norm, from the
first recorded step up to the first non-finite one, reaching ``exploding_warning`` times
its starting level (``exploding_error`` for an error), overflowing float32, or growing
at least ``nonfinite_growth`` per step right before a NaN/inf. It is dated by the step
where growth began: the last step at which the norm was still within a factor 10 of its
start. The rules on the depth profile then read only the steps up to that one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..store.view import RunView
from . import advice
from ._series import clean, fmt, span
from ._steps import param_layers, total_grad_norms
from .finding import Finding
from .thresholds import DiagnoseThresholds

#: A norm within this factor of its starting level has not started to grow.
CALM = 10.0


@dataclass(frozen=True)
class Blowup:
    """Rows of a blow-up: ``start`` (the first measured step), ``began`` (the last step
    still within :data:`CALM` of the start), ``peak`` (the largest norm, or the first
    overflow), and the norms there."""

    start: int
    began: int
    peak: int
    base: float
    top: float


def find_blowup(
    run: RunView, t: DiagnoseThresholds, stop: int | None, growth: float | None
) -> Blowup | None:
    """The blow-up among the rows before ``stop`` (the first non-finite row, or None),
    or None. ``growth`` is the growth per step right before ``stop``."""
    total = total_grad_norms(run)[: run.steps.size if stop is None else stop]
    usable = np.flatnonzero(~np.isnan(total) & (total > 0))
    if usable.size < 2:
        return None
    start = int(usable[0])
    base = float(total[start])
    overflow = np.flatnonzero(np.isposinf(total))
    peak = int(overflow[0]) if overflow.size else int(usable[np.argmax(total[usable])])
    top = float(total[peak])
    blew = top >= t.exploding_warning * base or (
        stop is not None and growth is not None and growth >= t.nonfinite_growth
    )
    if not blew or peak == start:
        return None
    calm = usable[(usable <= peak) & (total[usable] <= CALM * base)]
    return Blowup(start, int(calm[-1]), peak, base, top)


def blowup_findings(
    run: RunView, t: DiagnoseThresholds, blowup: Blowup | None, nonfinite_step: int | None
) -> list[Finding]:
    """An ``exploding`` finding for ``blowup`` (see :func:`find_blowup`), dated by the step
    where growth began; ``nonfinite_step`` is the first non-finite step after it."""
    if blowup is None:
        return []
    steps = run.steps
    began, peak = int(steps[blowup.began]), int(steps[blowup.peak])
    layers = param_layers(run)
    grad = run.history("grad_norm")
    with np.errstate(divide="ignore", invalid="ignore"):
        grew = grad[blowup.peak, layers] / grad[blowup.began, layers]
    hit = [run.layers[i] for i, g in zip(layers, grew, strict=True) if not g <= CALM]
    names = hit or [run.layers[i] for i in layers]
    overflowed = bool(np.isinf(blowup.top))
    ratio = blowup.top / blowup.base
    reached = "a norm beyond float32" if overflowed else fmt(blowup.top)
    after = [f"turned non-finite at step {nonfinite_step}"] if nonfinite_step is not None else []
    if (grad[blowup.peak + 1 :, layers] == 0).any():
        after.append("underflowed to 0 later")
    severe = overflowed or nonfinite_step is not None or ratio >= t.exploding_error
    return [
        Finding(
            kind="exploding",
            severity="error" if severe else "warning",
            summary=(
                f"exploding gradient from step {began}: the gradient norm of {span(names)} "
                f"grew from {fmt(blowup.base)} to {reached} at step {peak}"
                + (f" (×{fmt(ratio)})" if not overflowed else "")
                + (f", then {' and '.join(after)}" if after else "")
            ),
            where={"layers": names, "step": began},
            evidence={
                "since_step": began,
                "peak_step": peak,
                "grad_norm_start": clean(blowup.base),
                "grad_norm_peak": None if overflowed else clean(blowup.top),
                "growth": None if overflowed else clean(ratio),
                "overflowed": overflowed,
                "nonfinite_step": nonfinite_step,
                "grad_norms": [
                    clean(v) for v in total_grad_norms(run)[blowup.began : blowup.peak + 1][:20]
                ],
            },
            cause=(
                f"The total gradient norm grew from step {began} on: each update overshot "
                "and made the next gradient larger, until "
                + (
                    "the numbers overflowed. "
                    if overflowed or nonfinite_step is not None
                    else "it was orders of magnitude above where it started. "
                )
                + "What follows an overflow (units saturated by blown-up weights, gradients "
                "of 0, NaN) is its consequence, not a vanishing gradient. The learning rate "
                "is too large for this gradient scale, or large gradients went unclipped."
            ),
            remedies=(advice.lower_lr(), advice.CLIP, advice.BP_CLIP, advice.NORMALISE),
            references=advice.NONFINITE_REFERENCES,
            step=began,
        )
    ]
