"""Rules on the per-layer profile of a run: vanishing and exploding across depth,
saturated sigmoid/tanh layers, dead ReLU layers.

Every rule reads a :class:`~backprobe.store.view.RunView` (a live Probe, a stored run or a
one-step ``bp.check``) and summarises each statistic by its median over the recorded
steps, so that one odd batch neither hides nor invents a problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..store.view import RunView
from . import advice
from ._series import clean, fmt, leading_run, log_ratio, span, typical
from .finding import Finding
from .thresholds import DiagnoseThresholds


def _candidates(run: RunView) -> tuple[np.ndarray, np.ndarray]:
    """Which layers may be the reference, best first, bool [layers] each: those that ran
    and are not a ``"params"`` entry (parameters used outside their owner's call) and
    recorded an output; else any that ran and are not a ``"params"`` entry."""
    output = np.isfinite(typical(run.history("act_mean")))
    usable = np.asarray(
        [layer.ran and layer.role != "params" for layer in run.layer_info], dtype=bool
    )
    return usable & output, usable


def _reference(values: np.ndarray, candidates: tuple[np.ndarray, ...]) -> int | None:
    """Index of the layer nearest the loss with a measured (finite, positive) value
    among the first of ``candidates`` that has one; None when none has."""
    measured = np.isfinite(values) & (values > 0)
    for allowed in candidates:
        hits = np.flatnonzero(measured & allowed)
        if hits.size:
            return int(hits[-1])
    return None


def compared_grad_norms(run: RunView) -> np.ndarray:
    """Parameter-gradient norms [S, layers] as the depth comparison reads them: NaN for a
    tied layer (``shared_with``), whose gradient is the shared parameter's, summed over
    both ends; such a layer is compared by its backward signal only."""
    grad = run.history("grad_norm").copy()
    tied = [layer.index for layer in run.layer_info if layer.shared_with]
    grad[:, tied] = np.nan
    return grad


def relative_profiles(run: RunView) -> dict[str, np.ndarray]:
    """log10 of each layer's parameter-gradient norm (``"grad"``, tied layers excluded,
    see :func:`compared_grad_norms`) and backward signal (``"signal"``) relative to the
    reference's, per recorded step: [S, layers] each, NaN where not measured. The
    reference is the layer nearest the loss that has the statistic, ran and is not a
    ``"params"`` entry."""
    candidates = _candidates(run)
    out = {}
    for key, values in (("grad", compared_grad_norms(run)), ("signal", run.history("signal_norm"))):
        ref = _reference(typical(values), candidates)
        if ref is None:
            out[key] = np.full_like(values, np.nan)
        else:
            out[key] = log_ratio(values, values[:, ref : ref + 1])
    return out


def chain(run: RunView) -> np.ndarray:
    """The layers judged as a chain, bool [layers]: all of them, or, when the run has
    residual blocks (role ``"block"``), the residual stream: the blocks and the layers
    outside any block; per-layer gains inside a residual branch are not a chain."""
    info = run.layer_info
    if not any(layer.role == "block" for layer in info):
        return np.ones(len(info), dtype=bool)
    return np.asarray([layer.role == "block" or not layer.block for layer in info], dtype=bool)


def _depth_profile(run: RunView) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Typical log10 ratios to the reference of the gradient and of the signal of each
    layer of the :func:`chain` (NaN for the others), and the per-step profiles."""
    profiles = relative_profiles(run)
    off = ~chain(run)
    grad, signal = typical(profiles["grad"]), typical(profiles["signal"])
    grad[off] = np.nan
    signal[off] = np.nan
    return grad, signal, profiles


def first_to_last_ratio(run: RunView) -> float | None:
    """The verdict's first / last gradient ratio: at the input end of the depth chain,
    the parameter gradient against the reference's (the backward signal where the first
    layer has no comparable parameter gradient), median over the recorded steps; None
    when fewer than two layers are measured."""
    grad, signal, _ = _depth_profile(run)
    measured = np.flatnonzero(~np.isnan(grad) | ~np.isnan(signal))
    if measured.size < 2:
        return None
    first = measured[0]
    return float(10 ** (signal[first] if np.isnan(grad[first]) else grad[first]))


def _first_step(run: RunView, series: np.ndarray, bad) -> int | None:
    """The first recorded step at which ``bad(series[row])`` holds."""
    with np.errstate(invalid="ignore"):
        hits = np.flatnonzero(bad(series))
    return int(run.steps[hits[0]]) if hits.size else None


def depth_findings(run: RunView, t: DiagnoseThresholds) -> list[Finding]:
    """Vanishing or exploding across depth: the unbroken run of layers from the input
    whose gradient norm or backward signal is below ``vanishing_warning`` (above
    ``exploding_warning``) of the last layer's."""
    grad, signal, profiles = _depth_profile(run)
    with np.errstate(invalid="ignore"):
        low = np.fmin(grad, signal)
        high = np.fmax(grad, signal)
    measured = ~np.isnan(low)
    findings = []
    directions: tuple[tuple[Literal["vanishing", "exploding"], np.ndarray, float, float], ...] = (
        ("vanishing", low, t.vanishing_warning, t.vanishing_error),
        ("exploding", high, t.exploding_warning, t.exploding_error),
    )
    for kind, values, bad_limit, error_limit in directions:
        sign = 1 if kind == "exploding" else -1
        with np.errstate(invalid="ignore"):
            bad = sign * values > sign * np.log10(bad_limit)
        starving = leading_run(bad, measured)
        if starving.size == 0:
            continue
        severe = sign * float(values[starving[0]]) > sign * np.log10(error_limit)
        findings.append(
            _depth_finding(run, kind, starving, grad, signal, severe, profiles, bad_limit)
        )
    return findings


def _depth_finding(
    run: RunView,
    kind: Literal["vanishing", "exploding"],
    layers: np.ndarray,
    grad: np.ndarray,
    signal: np.ndarray,
    severe: bool,
    profiles: dict[str, np.ndarray],
    limit: float,
) -> Finding:
    names = run.layers
    info = run.layer_info
    blocks = {names[i] for i in layers if info[i].role == "block"}
    where = [
        layer.name
        for layer in info
        if layer.index in set(layers.tolist()) or (layer.block and layer.block in blocks)
    ]
    first = int(layers[0])
    grad_ratio = 10 ** grad[first] if not np.isnan(grad[first]) else float("nan")
    signal_ratio = 10 ** signal[first] if not np.isnan(signal[first]) else float("nan")
    # the more extreme of the two measures, the one that crossed the threshold
    pick = np.nanmin if kind == "vanishing" else np.nanmax
    shown = float(pick([grad_ratio, signal_ratio]))
    # backward signal gain per layer across the starving part (geometric mean)
    gains = typical(run.history("gain"))[layers[1:]] if layers.size > 1 else np.zeros(0)
    gains = gains[np.isfinite(gains) & (gains > 0)]
    mean_gain = float(np.exp(np.mean(np.log(gains)))) if gains.size else float("nan")
    families = {info[i].family for i in range(first, int(layers[-1]) + 2) if i < len(info)}
    families.discard("")
    saturated = typical(run.history("saturated"))[layers]
    sat = float(np.nanmean(saturated)) if np.isfinite(saturated).any() else float("nan")
    sign = 1 if kind == "exploding" else -1
    column = np.fmin(profiles["grad"][:, first], profiles["signal"][:, first])
    if kind == "exploding":
        column = np.fmax(profiles["grad"][:, first], profiles["signal"][:, first])
    since = _first_step(run, column, lambda c: sign * c > sign * np.log10(limit))
    evidence = {
        "first_to_last_grad_ratio": clean(grad_ratio),
        "first_to_last_signal_ratio": clean(signal_ratio),
        "layers_affected": len(where),
        "layers_total": len(names),
        "mean_gain_per_layer": clean(mean_gain),
        "saturated_fraction": clean(sat),
        "activations": sorted(families),
        "since_step": since,
        "steps_recorded": int(run.steps.size),
    }
    reach = span(where)
    if kind == "vanishing":
        summary = (
            f"vanishing gradient: the gradient reaching layers {reach} is {fmt(shown)} of the "
            f"last layer's"
            + (f"; the backward signal shrinks ×{fmt(mean_gain)} per layer" if gains.size else "")
        )
        bounded = families & set(advice.BOUNDED)
        if blocks:
            cause = (
                f"The residual stream itself loses the gradient: across {len(blocks)} "
                f"residual blocks it shrinks to {fmt(shown)} on its way to the input, so the "
                "skip connections do not carry it. A normalisation after each addition "
                "(post-LN: x = LN(x + F(x))) rescales the gradient at every block, and large "
                "early updates without warm-up drive the lower blocks' gradient away "
                "(Xiong et al. 2020); a normalisation gain near 0 cuts the stream outright."
            )
        elif bounded:
            cause = (
                f"The chain rule multiplies one local derivative per layer; "
                f"{'/'.join(sorted(bounded))} has a derivative of at most "
                f"{'1/4' if 'sigmoid' in bounded else '1'}, so over {layers.size} layers the "
                f"product shrinks to {fmt(shown)} and the early layers barely learn."
                + (f" {100 * sat:.0f} % of their units are saturated." if sat > 0.05 else "")
            )
        else:
            dead = typical(run.history("dead"))[first : int(layers[-1]) + 2]
            worst_dead = float(np.nanmax(dead)) if np.isfinite(dead).any() else 0.0
            cause = (
                "Each layer multiplies the backward signal by less than 1 (weights too small "
                "for the activation, or units that pass no gradient), so the product over "
                f"{layers.size} layers leaves the early layers a gradient of {fmt(shown)}."
                + (
                    f" Up to {100 * worst_dead:.0f} % of the ReLU units there are dead and "
                    "pass no gradient at all."
                    if worst_dead >= 0.5
                    else ""
                )
            )
        remedies = advice.vanishing_remedies(families, residual=bool(blocks))
    else:
        size = (
            f"overflows float32 (beyond {fmt(float(np.finfo(np.float32).max))})"
            if np.isinf(shown)
            else f"is {fmt(shown)} times the last layer's"
        )
        summary = f"exploding gradient: the gradient reaching layers {reach} {size}" + (
            f"; the backward signal grows ×{fmt(mean_gain)} per layer" if gains.size else ""
        )
        cause = (
            "Each layer multiplies the backward signal by more than 1 (weights too large for "
            f"the activation), so over {layers.size} layers the gradient grows to "
            f"{fmt(shown)} times the last layer's; updates of the early layers overshoot."
        )
        remedies = advice.exploding_remedies()
    return Finding(
        kind=kind,
        severity="error" if severe else "warning",
        summary=summary,
        where={"layers": where},
        evidence=evidence,
        cause=cause,
        remedies=remedies,
        references=advice.RESIDUAL_REFERENCES if blocks else advice.DEPTH_REFERENCES,
        step=since,
    )


@dataclass(frozen=True)
class _Crowded:
    """The layers of some activation families in which a fraction of the units (saturated
    or dead) reaches its warning level: their indices and names, the fraction of each
    (median over the recorded steps), the largest one, and the first recorded step at
    which the first of them reached the level (None if no single step did)."""

    indices: list[int]
    names: list[str]
    fractions: np.ndarray
    worst: float
    since: int | None

    def fraction_by_layer(self) -> dict[str, float | None]:
        """Each layer's fraction, by name, JSON-ready."""
        return {n: clean(v) for n, v in zip(self.names, self.fractions, strict=True)}

    def per_layer(self, values: np.ndarray) -> dict[str, float | None]:
        """``values`` (one per layer of the run) of these layers, by name, JSON-ready."""
        return {n: clean(values[i]) for n, i in zip(self.names, self.indices, strict=True)}


def _crowded_layers(
    run: RunView, stat: str, families: tuple[str, ...], warn: float
) -> _Crowded | None:
    """The layers of ``families`` whose median ``stat`` is at least ``warn``; None when
    there is none."""
    values = typical(run.history(stat))
    chosen = [
        layer.index
        for layer in run.layer_info
        if layer.family in families
        and np.isfinite(values[layer.index])
        and values[layer.index] >= warn
    ]
    if not chosen:
        return None
    fractions = values[chosen]
    since = _first_step(run, run.history(stat)[:, chosen[0]], lambda c: c >= warn)
    names = [run.layers[i] for i in chosen]
    return _Crowded(chosen, names, fractions, float(fractions.max()), since)


def saturation_findings(run: RunView, t: DiagnoseThresholds) -> list[Finding]:
    """Sigmoid/tanh-family layers with at least ``saturation_warning`` of their units on
    the flat tails."""
    crowded = _crowded_layers(run, "saturated", advice.BOUNDED, t.saturation_warning)
    if crowded is None:
        return []
    families = sorted({run.layer_info[i].family for i in crowded.indices})
    return [
        Finding(
            kind="saturation",
            severity="error" if crowded.worst >= t.saturation_error else "warning",
            summary=(
                f"saturated {'/'.join(families)}: {100 * crowded.worst:.0f} % of the units of "
                f"{span(crowded.names)} sit on the flat tails"
            ),
            where={"layers": crowded.names},
            evidence={
                "saturated_fraction": crowded.fraction_by_layer(),
                "max_saturated_fraction": crowded.worst,
                "output_std": crowded.per_layer(typical(run.history("act_std"))),
                "since_step": crowded.since,
            },
            cause=(
                "A saturated sigmoid/tanh unit has a derivative below 1 % of its maximum, so "
                "almost no gradient passes through it. Its inputs are too large: weights "
                "too large, inputs not normalised, or a top sigmoid layer driven to 0 early "
                "in training (Glorot & Bengio 2010)."
            ),
            remedies=(
                advice.XAVIER_INIT,
                advice.NORMALISE,
                advice.swap_to_relu(families),
                advice.lower_lr(),
            ),
            references=advice.SATURATION_REFERENCES,
            step=crowded.since,
        )
    ]


def dead_findings(run: RunView, t: DiagnoseThresholds) -> list[Finding]:
    """ReLU-family layers with at least ``dead_warning`` of their units zero for every
    example of the batch."""
    crowded = _crowded_layers(run, "dead", ("relu", "relu6"), t.dead_warning)
    if crowded is None:
        return []
    before = [_feeding_layer(run, i) for i in crowded.indices]
    return [
        Finding(
            kind="dead_units",
            severity="error" if crowded.worst >= t.dead_error else "warning",
            summary=(
                f"dead ReLUs: {100 * crowded.worst:.0f} % of the units of {span(crowded.names)} "
                f"output 0 for every example"
            ),
            where={"layers": crowded.names, "fed_by": [b for b in before if b]},
            evidence={
                "dead_fraction": crowded.fraction_by_layer(),
                "max_dead_fraction": crowded.worst,
                "output_mean": crowded.per_layer(typical(run.history("act_mean"))),
                "since_step": crowded.since,
            },
            cause=(
                "A ReLU unit whose input is negative for every example outputs 0 and passes "
                "a gradient of exactly 0, so its incoming weights never change and it stays "
                "dead. Typical causes: a large negative bias, weights pushed there by too "
                "large a learning rate, or an initialisation that is too small."
            ),
            remedies=(advice.ZERO_BIAS, advice.HE_INIT, advice.LEAKY, advice.lower_lr()),
            references=advice.DEAD_REFERENCES,
            step=crowded.since,
        )
    ]


def _feeding_layer(run: RunView, index: int) -> str | None:
    """The nearest layer before ``index`` that owns parameters (the one feeding it)."""
    for layer in reversed(run.layer_info[:index]):
        if layer.n_params:
            return layer.name
    return None
