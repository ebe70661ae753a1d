"""The learning rate judged from the updates the optimizer applied.

A run recorded with ``bp.Probe(model, optimizer=opt)`` holds ``update_to_weight``, the
measured ||Δθ|| / ||θ|| of each recorded step's update per layer (see
:mod:`backprobe.probe.updates`), and for Adam ``adam_step``. Measured updates replace the
learning-rate rule's estimates (:mod:`backprobe.diagnose.training`) wherever they exist.

Each recorded step's ratio is the median over its layers. Its median over the first and
over the last ``trend_window`` recorded steps is compared with the band around 10⁻³ (a
rule of thumb, not a law: see :class:`~backprobe.diagnose.thresholds.DiagnoseThresholds`
for the thresholds and the runs they were measured on), and so is the largest step: too
large at the start (or one step far too large) calls for warm-up first, too large at the
end for a lower learning rate; too small only when every recorded step is far below the
band (a converged run's updates shrink with its gradient, and a decayed schedule's last
steps are small by design).
"""

from __future__ import annotations

import warnings

import numpy as np

from ..store.view import RunView
from . import advice
from ._series import clean, fmt, typical
from .finding import Finding
from .thresholds import DiagnoseThresholds


def measured_ratios(run: RunView, rows: int | None = None) -> np.ndarray | None:
    """``update_to_weight`` [rows, layers] of the first ``rows`` recorded steps (all by
    default), or None when the run measured no update."""
    ratios = run.history("update_to_weight")[:rows]
    return ratios if np.isfinite(ratios).any() else None


def _windows(per_step: np.ndarray, window: int) -> tuple[float, float, int]:
    """Median of the steps' values over the first and the last ``window`` measured
    steps (halves when fewer than two windows were measured), and how many were."""
    measured = per_step[np.isfinite(per_step)]
    size = min(window, max(1, measured.size // 2))
    return float(np.median(measured[:size])), float(np.median(measured[-size:])), size


def update_findings(run: RunView, t: DiagnoseThresholds, ratios: np.ndarray) -> list[Finding]:
    """Findings on the measured update-to-weight ratios ``ratios`` [rows, layers]."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # steps without a measured update
        per_step = np.nanmedian(np.where(np.isfinite(ratios), ratios, np.nan), axis=1)
    start, end, size = _windows(per_step, t.trend_window)
    names = run.layers
    per_layer = typical(ratios)
    layers = [n for n, v in zip(names, per_layer, strict=True) if np.isfinite(v)]
    adam = typical(run.history("adam_step")[: ratios.shape[0]])
    evidence = {
        "update_to_weight_start": start,
        "update_to_weight_end": end,
        "steps_per_window": size,
        "per_layer": {n: clean(v) for n, v in zip(names, per_layer, strict=True) if n in layers},
        "estimated_from": "measured",
        "target": 1e-3,
    }
    if np.isfinite(adam).any():
        evidence["adam_step_median"] = float(np.nanmedian(adam))
    largest = float(np.nanmax(per_step))
    at = int(np.nanargmax(per_step))
    top = int(run.steps[at])
    evidence["update_to_weight_largest"], evidence["largest_at_step"] = largest, top
    single = largest > t.update_too_large_error  # one step far too large
    worst = largest if single else max(start, end)
    if worst > t.update_too_large:
        early = at < per_step.size / 2 if single else start >= end
        when = "its first" if early else "its last"
        hit = [n for n, v in zip(names, per_layer, strict=True) if v > t.update_too_large]
        remedies = (
            (advice.ATTENTION_WARMUP, advice.lower_lr(), advice.CLIP)
            if early
            else (advice.lower_lr(f"{max(10, round(worst / 1e-3)):g}"), advice.CLIP)
        )
        return [
            Finding(
                kind="learning_rate",
                severity="error" if worst > t.update_too_large_error else "warning",
                summary=(
                    f"learning rate too large: the update at step {top} changed the weights "
                    f"by {fmt(worst)} of their norm (median over layers; aim for ~1e-3)"
                    if single
                    else f"learning rate too large: over {when} {size} recorded steps each "
                    f"update changed the weights by {fmt(worst)} of their norm (median over "
                    "layers; aim for ~1e-3)"
                ),
                where={"layers": hit or layers},
                evidence=evidence,
                cause=(
                    f"The updates the optimizer applied, measured around its step, moved "
                    f"the weights by {fmt(worst)} of themselves per step "
                    f"({'at the start' if early else 'at the end'} of the run): further than "
                    "the gradient describes the loss, so training oscillates, spikes or "
                    "diverges."
                    + (
                        " Large first steps are what warm-up avoids (Adam moves every "
                        "weight by about the learning rate from its first step on)."
                        if early
                        else ""
                    )
                ),
                remedies=remedies,
                references=advice.UPDATE_REFERENCES,
            )
        ]
    if largest < t.update_too_small:
        return [
            Finding(
                kind="learning_rate",
                severity="warning",
                summary=(
                    f"learning rate too small: no recorded update changed the weights by "
                    f"more than {fmt(largest)} of their norm (aim for ~1e-3)"
                ),
                where={"layers": layers},
                evidence=evidence,
                cause=(
                    f"Every measured update is below {fmt(t.update_too_small)} of the "
                    f"weights: training will take ~{fmt(1e-3 / largest)} times more steps "
                    "than it needs."
                ),
                remedies=(advice.raise_lr(f"{max(10, round(1e-3 / largest)):g}"), advice.ADAM),
                references=advice.UPDATE_REFERENCES,
            )
        ]
    return []
