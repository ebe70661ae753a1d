"""Rules on how a run trained: the first non-finite value, the learning rate for the
gradient scale, and a loss plateau while the early layers starve.

The learning-rate rule needs the size of the update. A probe given the optimizer measures
it (``Probe(optimizer=)``: the rule of :mod:`backprobe.diagnose.updates` judges it);
otherwise the probe records ||g|| and ||θ|| per layer, before the optimizer steps, and
the rule uses, best first:

1. a learning rate that the caller passes (``lr=``), or a recorded scalar ``"lr"``
   (``probe.record_scalar("lr", lr)``), or ``"lr"`` in the run's config: the update is
   then estimated as ``lr·||g||`` for SGD-like optimizers (``optimizer="sgd"``) and as
   ``lr·√n`` for Adam-like ones (``optimizer="adam"``: early in training every element
   moves by about lr), divided by ``||θ||``;
2. otherwise the change of ``||θ||`` between recorded steps, per step: by the triangle
   inequality ``| ||θ'|| − ||θ|| | ≤ ||θ' − θ||``, a lower bound on the update ratio.
   A lower bound can prove an update too large, never too small, so without a learning
   rate only "too large" is reported.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np

from ..errors import BackprobeError
from ..store.view import RunView
from . import advice
from ._series import clean, fmt, leading_run, span, typical
from ._steps import no_gradient_rows, param_layers, total_grad_norms
from .depth import relative_profiles
from .finding import Finding
from .thresholds import DiagnoseThresholds
from .updates import measured_ratios, update_findings

#: The update rule the learning-rate rule assumes when it turns ``lr`` into an update
#: size: ``"sgd"`` (update lr·||g||) or ``"adam"`` (every element moves by about lr).
UpdateRule = Literal["sgd", "adam"]
UPDATE_RULES: tuple[UpdateRule, ...] = get_args(UpdateRule)


def first_nonfinite_row(run: RunView) -> int | None:
    """Row of the first recorded step with a NaN/inf in a layer's output or gradient, in a
    parameter gradient, or in the loss; None when every step was finite. A step without
    any gradient (see :func:`~backprobe.diagnose._steps.no_gradient_rows`) is a misuse,
    not a non-finite value."""
    first = run.history("first_nonfinite")[:, 0]
    grad = run.history("grad_norm")[:, param_layers(run)]
    loss = run.history("loss")
    seen_loss = np.cumsum(np.isfinite(loss)) > 0
    bad = (
        (first >= 0)
        | (np.isnan(grad).any(axis=1) & ~no_gradient_rows(run))
        | np.isinf(loss)
        | (np.isnan(loss) & np.concatenate(([False], seen_loss[:-1])))
    )
    hits = np.flatnonzero(bad)
    return int(hits[0]) if hits.size else None


def growth_before(
    run: RunView, row: int, window: int
) -> tuple[float | None, list[float], list[int]]:
    """Growth per step of the total parameter-gradient norm over the last ``window``
    recorded steps before ``row`` (a least-squares fit of its log against the step), the
    norms and their steps; growth None with fewer than two usable steps."""
    total = total_grad_norms(run)
    start = max(0, row - window)
    steps = run.steps[start:row]
    norms = total[start:row]
    ok = np.isfinite(norms) & (norms > 0)  # an overflow (inf) has no log to fit
    steps, norms = steps[ok], norms[ok]
    if steps.size < 2:
        return None, norms.tolist(), steps.tolist()
    slope = np.polyfit(steps.astype(np.float64), np.log(norms), 1)[0]
    return float(math.exp(min(slope, 700.0))), norms.tolist(), [int(s) for s in steps]


def nonfinite_findings(run: RunView, t: DiagnoseThresholds) -> list[Finding]:
    """The first NaN/inf: at which step, in which layer and pass, and what preceded it."""
    row = first_nonfinite_row(run)
    if row is None:
        return []
    step = int(run.steps[row])
    names = run.layers
    layer, phase = (int(v) for v in run.history("first_nonfinite")[row])
    if layer >= 0:
        name = names[layer]
        part = "forward output" if phase == 0 else "gradient"
        place = f"in layer {layer} ({name}): first NaN/inf in its {part}"
        where = {"layers": [name], "step": step}
    else:
        grad = run.history("grad_norm")[row]
        bad = [i for i in param_layers(run) if not np.isfinite(grad[i])]
        if bad:
            name = names[bad[0]]
            place = f"in the parameter gradient of layer {name}"
            where = {"layers": [name], "step": step}
        else:
            name = None
            place = "in the loss"
            where = {"step": step}
    growth, norms, steps = growth_before(run, row, t.growth_window)
    loss = run.history("loss")[max(0, row - t.growth_window) : row]
    if growth is not None and growth >= t.nonfinite_growth:  # the gradient blew up
        summary = (
            f"non-finite at step {step} {place}: an overflow, after the gradient norm grew "
            f"×{fmt(growth)} per step"
        )
        cause = (
            f"The gradient norm grew by a factor {fmt(growth)} per step before step {step} "
            f"({fmt(norms[0])} → {fmt(norms[-1])}): each update overshot and made the next "
            "gradient larger, until the numbers overflowed. The learning rate is too large "
            "for this gradient scale, or a few large gradients went unclipped."
        )
        remedies = (advice.lower_lr(), advice.CLIP, advice.BP_CLIP, advice.NORMALISE)
    else:
        grew = f" (growth ×{fmt(growth)} per step before it)" if growth is not None else ""
        summary = f"non-finite at step {step} {place}"
        cause = (
            f"The gradient did not blow up before step {step}{grew}: a single operation "
            "produced the NaN/inf, e.g. log or sqrt of 0 or of a negative number, a division "
            "by zero, exp overflowing, or a weight that was already NaN."
            + (
                f" It first appeared in the gradient of {name}'s output, so the operation "
                f"lies just after {name}, in what consumes its output (a sqrt or log at 0 "
                "behind torch.where gives inf·0 = NaN)."
                if layer >= 0 and phase == 1
                else ""
            )
        )
        remedies = (
            advice.ANOMALY,
            advice.Remedy(
                "Check the parameters for NaN/inf",
                "[n for n, p in model.named_parameters() if not torch.isfinite(p).all()]",
                "A NaN weight makes every later output NaN.",
            ),
            advice.CLIP,
            advice.lower_lr(),
        )
    return [
        Finding(
            kind="nonfinite",
            severity="error",
            summary=summary,
            where=where,
            evidence={
                "step": step,
                "layer": name,
                "layer_index": layer if layer >= 0 else None,
                "phase": None if layer < 0 else ("forward" if phase == 0 else "backward"),
                "growth_per_step": clean(growth) if growth is not None else None,
                "overflow": growth is not None and growth >= t.nonfinite_growth,
                "grad_norms_before": norms,
                "steps_before": steps,
                "losses_before": [clean(v) for v in loss],
            },
            cause=cause,
            remedies=remedies,
            references=advice.NONFINITE_REFERENCES,
            step=step,
        )
    ]


def _run_lr(run: RunView) -> np.ndarray | float | None:
    """A recorded scalar "lr" ([S]) or "lr" in the stored run's config, else None."""
    names = getattr(run, "scalar_names", [])
    if "lr" in names:
        values = run.history("lr")
        if np.isfinite(values).any():
            return values
    info = getattr(run, "info", None)
    config = getattr(info, "config", None) or {}
    value = config.get("lr")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def update_rule(name: str) -> UpdateRule:
    """``name`` as an :data:`UpdateRule`, checked: the ``optimizer=`` of the diagnosis.

    Raises :class:`~backprobe.errors.BackprobeError` for any other name."""
    for rule in UPDATE_RULES:
        if name == rule:
            return rule
    raise BackprobeError(
        f"Expected optimizer to be one of {UPDATE_RULES}, but got {name!r}; pass "
        "'adam' for Adam-like optimizers (Adam, AdamW, RMSprop), else 'sgd'."
    )


def update_ratios(
    run: RunView, lr: float | np.ndarray | None, optimizer: UpdateRule
) -> tuple[np.ndarray, str]:
    """Update-to-weight ratio per recorded step (or interval) and parameter layer,
    [rows, param layers], and how it was estimated (``"lr"`` or ``"weight_change"``)."""
    layers = param_layers(run)
    weight = run.history("weight_norm")[:, layers]
    if lr is not None:
        rate = np.broadcast_to(np.asarray(lr, dtype=np.float64).reshape(-1, 1), weight.shape)
        if optimizer == "adam":
            n = np.asarray([run.layer_info[i].n_params for i in layers], dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                return rate * np.sqrt(n) / weight, "lr"
        return rate * run.history("grad_to_weight")[:, layers], "lr"
    gaps = np.diff(run.steps).astype(np.float64).reshape(-1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        change = np.abs(np.diff(weight, axis=0)) / weight[:-1] / np.maximum(gaps, 1.0)
    return change, "weight_change"


def learning_rate_findings(
    run: RunView,
    t: DiagnoseThresholds,
    lr: float | None = None,
    optimizer: UpdateRule = "sgd",
) -> list[Finding]:
    """Update-to-weight ratio far from ~1e-3: too large (median over layers above
    ``lr_too_large``) or, when the learning rate is known, too small (every layer below
    ``lr_too_small``). Only steps before the first non-finite one count. A run that
    measured its updates (``Probe(optimizer=)``) is judged on them instead
    (:mod:`backprobe.diagnose.updates`)."""
    optimizer = update_rule(optimizer)
    measured = measured_ratios(run, first_nonfinite_row(run))
    if measured is not None:
        return update_findings(run, t, measured)
    layers = param_layers(run)
    if layers.size == 0 or run.steps.size == 0:
        return []
    rate = lr if lr is not None else _run_lr(run)
    ratios, method = update_ratios(run, rate, optimizer)
    stop = first_nonfinite_row(run)
    if stop is not None:
        ratios = ratios[: stop if method == "lr" else max(stop - 1, 0)]
    ratios = np.where(np.isfinite(ratios) & (ratios > 0), ratios, np.nan)
    if not np.isfinite(ratios).any():
        return []
    per_layer = typical(ratios)
    with np.errstate(invalid="ignore"):
        median = float(np.nanmedian(per_layer))
        largest = float(np.nanmax(per_layer))
    names = [run.layers[i] for i in layers]
    evidence = {
        "update_to_weight_median": median,
        "update_to_weight_max": largest,
        "per_layer": {n: clean(v) for n, v in zip(names, per_layer, strict=True)},
        "estimated_from": method,
        "lr": None if rate is None else clean(float(np.nanmedian(np.asarray(rate, float)))),
        "optimizer": optimizer if method == "lr" else None,
        "target": 1e-3,
    }
    how = (
        f"lr·{'||g||' if optimizer == 'sgd' else '√n'}/||θ||"
        if method == "lr"
        else "the change of ||θ|| between recorded steps (a lower bound)"
    )
    if median > t.lr_too_large:
        hit = [n for n, v in zip(names, per_layer, strict=True) if v > t.lr_too_large]
        return [
            Finding(
                kind="learning_rate",
                severity="error" if median > t.lr_too_large_error else "warning",
                summary=(
                    f"learning rate too large: each step changes the weights by "
                    f"{fmt(median)} of their norm (median over layers; aim for ~1e-3)"
                ),
                where={"layers": hit},
                evidence=evidence,
                cause=(
                    f"The update-to-weight ratio, estimated from {how}, is {fmt(median)} per "
                    "step: every update moves the weights by a large part of themselves, "
                    "further than the gradient describes the loss, so training oscillates or "
                    "diverges (and often ends in NaN)."
                ),
                remedies=(advice.lower_lr(f"{max(10, round(median / 1e-3)):g}"), advice.CLIP),
                references=advice.LR_REFERENCES,
            )
        ]
    if method == "lr" and largest < t.lr_too_small:
        return [
            Finding(
                kind="learning_rate",
                severity="warning",
                summary=(
                    f"learning rate too small: each step changes the weights by at most "
                    f"{fmt(largest)} of their norm (aim for ~1e-3)"
                ),
                where={"layers": names},
                evidence=evidence,
                cause=(
                    f"The update-to-weight ratio, estimated from {how}, is below "
                    f"{fmt(t.lr_too_small)} in every layer: training will take "
                    f"~{fmt(1e-3 / largest)} times more steps than it needs."
                ),
                remedies=(advice.raise_lr(f"{max(10, round(1e-3 / largest)):g}"), advice.ADAM),
                references=advice.LR_REFERENCES,
            )
        ]
    return []


def plateau_findings(run: RunView, t: DiagnoseThresholds) -> list[Finding]:
    """The loss stopped moving over the last half of the run while the first layers'
    gradients are below ``plateau_starving`` of the last layer's."""
    loss = run.history("loss")
    rows = np.flatnonzero(np.isfinite(loss))
    if rows.size < t.plateau_min_steps:
        return []
    window = rows[rows.size // 2 :]
    third = max(1, window.size // 3)
    start, end = float(np.mean(loss[window[:third]])), float(np.mean(loss[window[-third:]]))
    change = abs(start - end) / max(abs(start), 1e-12)
    if change >= t.plateau_tolerance:
        return []
    grad = typical(relative_profiles(run)["grad"][window])
    measured = np.isfinite(grad)
    starving = leading_run(grad < math.log10(t.plateau_starving), measured)
    if starving.size == 0:
        return []
    names = [run.layers[i] for i in starving]
    ratio = 10 ** float(grad[starving[0]])
    steps = [int(run.steps[window[0]]), int(run.steps[window[-1]])]
    return [
        Finding(
            kind="plateau",
            severity="warning",
            summary=(
                f"loss plateau over steps {steps[0]}–{steps[1]} (changed {100 * change:.2g} %) "
                f"while layers {span(names)} get {fmt(ratio)} of the last layer's gradient"
            ),
            where={"layers": names, "steps": steps},
            evidence={
                "loss_start": start,
                "loss_end": end,
                "relative_change": change,
                "first_to_last_grad_ratio": ratio,
                "layers_starving": len(names),
            },
            cause=(
                "The loss stopped improving while the early layers receive almost no "
                "gradient: only the last layers learn, on top of features the early layers "
                "cannot change. This is the vanishing gradient seen from the loss curve."
            ),
            remedies=advice.vanishing_remedies(
                {layer.family for layer in run.layer_info},
                residual=any(layer.role == "block" for layer in run.layer_info),
            ),
            references=advice.DEPTH_REFERENCES,
            step=steps[1],
        )
    ]
