"""Figures of a run: the gradient's path through layers and through time, as pictures.

Every ``*_figure`` function takes plain numpy arrays (and names) and returns a
:class:`matplotlib.figure.Figure` drawn on the Agg canvas without pyplot: no global
figure registry, no GUI backend, nothing to close. They are drawn after the run, from
the run's stored arrays, never inside the training step. :func:`run_figures` picks the
data from a Probe or a stored run; :func:`save` writes PNG or SVG by the file's suffix.

Gradient norms span dozens of decades (the seeds' "long network": 10⁻⁴¹ at the first
layer, 10⁻² at the last), so every norm is drawn on a log scale; values of exactly 0
(underflow) cannot be drawn there and are counted in the axes' title instead.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._format import compact_number, counted
from ..errors import BackprobeError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..diagnose.finding import Finding
    from ..store.view import RunView

#: Colours of findings by severity.
SEVERITY_COLOURS = {"info": "#1f77b4", "warning": "#ff7f0e", "error": "#d62728"}
#: The theory's bounds: dashed, in the colour of the step they belong to; their one
#: legend entry is drawn in BOUND_LEGEND_COLOUR, so that no two entries share a colour.
BOUND_STYLE: dict[str, Any] = {"linestyle": "--", "linewidth": 1.1}
BOUND_LEGEND_COLOUR = "0.35"
#: The label of each drawn bound line: a leading "_" keeps it out of the legend.
BOUND_LINE = "_bound"
#: Tick labels on a layer axis beyond which only every k-th name is written.
MAX_LAYER_TICKS = 24
#: How many recorded steps the per-step figures draw by default.
DEFAULT_STEP_COUNT = 4


def _figure(width: float = 7.5, height: float = 4.0) -> Figure:
    """A new figure on the Agg canvas (PNG and SVG export, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend_with_bound(ax: Axes, bound_label: str | None, title: str | None = None) -> None:
    """The legend, plus (``bound_label``) one entry for the dashed bounds of every step
    in a colour of its own: the bounds share their steps' colours, which the steps'
    entries already show."""
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    if bound_label is not None:
        handles.append(Line2D([], [], color=BOUND_LEGEND_COLOUR, **BOUND_STYLE))
        labels.append(bound_label)
    ax.legend(handles, labels, fontsize="small", title=title)


def _plain_log_ticks(ax: Axes) -> None:
    """Tick labels of a log y axis as plain short numbers (``1.5``, ``2.0e3``) instead of
    ``1.5×10⁰``: for a curve such as the loss that spans a decade or less."""
    from matplotlib.ticker import LogFormatterSciNotation

    class CompactLogFormatter(LogFormatterSciNotation):
        def __call__(self, x: float, pos: int | None = None) -> str:
            # the parent decides which ticks are labelled; the label is ours
            return compact_number(x) if super().__call__(x, pos) else ""

    ax.yaxis.set_major_formatter(CompactLogFormatter())
    ax.yaxis.set_minor_formatter(CompactLogFormatter(labelOnlyBase=False))


def _per_step(values: np.ndarray, steps: Sequence[int], what: str) -> np.ndarray:
    """``values`` as float64 [k, n], one row per step of ``steps`` [k]; a 1-D array is
    the row of a single step."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    k = len(steps)
    if a.ndim != 2 or a.shape[0] != k:
        raise BackprobeError(
            f"Expected {what} with one row per step label ({k} step labels), shape [{k}, n] "
            f"(or [n] for one step), but got shape {np.shape(values)}."
        )
    return a


def _check_labels(labels: Sequence[object], n: int, what: str) -> list[str]:
    if len(labels) != n:
        raise BackprobeError(f"Expected {n} {what} (one per column) but got {len(labels)}.")
    return [str(label) for label in labels]


def _positive(values: np.ndarray) -> np.ndarray:
    """``values`` with non-positive and non-finite entries set to NaN (undrawable on a log
    axis; NaN leaves a gap in a line)."""
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def _zeros_note(values: np.ndarray) -> str:
    zeros = int(np.sum(values == 0))
    return f" — {zeros} value{'s' if zeros != 1 else ''} 0 (underflow) not drawn" if zeros else ""


def _measured_columns(values: np.ndarray) -> np.ndarray:
    """Indices of the columns with at least one finite value (e.g. layers that own
    parameters, for a parameter-gradient norm)."""
    return np.flatnonzero(np.isfinite(values).any(axis=0))


def _layer_axis(ax: Axes, names: Sequence[str], axis: str = "x") -> None:
    """Layer names as tick labels, thinned to at most :data:`MAX_LAYER_TICKS`."""
    stride = max(1, math.ceil(len(names) / MAX_LAYER_TICKS))
    ticks = list(range(0, len(names), stride))
    labels = [names[i] for i in ticks]
    if axis == "x":
        ax.set_xticks(ticks, labels, rotation=60 if len(ticks) > 8 else 0, ha="right")
        ax.set_xlabel("layer (input → output)")
    else:
        ax.set_yticks(ticks, labels)
        ax.set_ylabel("layer (input at top)")


def choose_steps(steps: np.ndarray, count: int = DEFAULT_STEP_COUNT) -> np.ndarray:
    """Rows of ``count`` recorded steps spread evenly from the first to the last, int [k]
    (all rows when there are fewer)."""
    n = int(np.asarray(steps).size)
    if n <= count:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, count)).astype(int))


def _step_colours(k: int) -> list[tuple[float, ...]]:
    """Early steps light, the last step dark: one colour per drawn step."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.85 - 0.75 * i / max(1, k - 1)) for i in range(k)]


# ------------------------------------------------------------------------- through layers


def gradient_flow_figure(
    values: np.ndarray,
    layers: Sequence[str],
    steps: Sequence[int],
    label: str = "‖dL/dθ‖ (parameter-gradient norm)",
) -> Figure:
    """One line per chosen step of a per-layer norm against depth, on a log scale: the
    seeds' "long network" picture, where a vanishing gradient is a line falling toward
    the input.

    ``values`` [k, layers] (or one step [layers]) holds the norm at ``steps`` [k];
    ``layers`` names the columns. Layers with no value at any drawn step (layers without
    parameters, for a parameter-gradient norm) are left out of the x axis.
    """
    v = _per_step(values, steps, "values")
    names = _check_labels(layers, v.shape[1], "layer names")
    keep = _measured_columns(v)
    fig = _figure()
    ax = fig.add_subplot()
    for row, (step, colour) in enumerate(zip(steps, _step_colours(len(steps)), strict=True)):
        line = _positive(v[row, keep])
        ax.plot(np.arange(keep.size), line, "o-", ms=3, color=colour, label=f"step {int(step)}")
    ax.set_yscale("log")
    _layer_axis(ax, [names[i] for i in keep])
    ax.set_ylabel(label)
    ax.set_title("gradient flow through the layers" + _zeros_note(v[:, keep]))
    ax.grid(True, which="major", alpha=0.3)
    if len(steps):
        ax.legend(fontsize="small")
    return fig


def compare_flow_figure(profiles: Mapping[str, tuple[Sequence[str], np.ndarray]]) -> Figure:
    """Several runs' gradient flow at one step each, overlaid on a log scale.

    ``profiles`` maps a run's label to (layer names, norms [layers]). Each run's layers
    with a value are drawn at positions 0, 1, … from the input, so networks of different
    depth compare by position; the names label the axis when all runs share them.
    """
    fig = _figure()
    ax = fig.add_subplot()
    shared: list[str] | None = None
    for i, (label, (names, values)) in enumerate(profiles.items()):
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        names = _check_labels(names, v.size, f"layer names of {label!r}")
        keep = _measured_columns(v[None, :])
        kept = [names[j] for j in keep]
        shared = kept if i == 0 else (shared if shared == kept else None)
        ax.plot(np.arange(keep.size), _positive(v[keep]), "o-", ms=3, label=str(label))
    ax.set_yscale("log")
    if shared is not None:
        _layer_axis(ax, shared)
    else:
        ax.set_xlabel("layer with parameters, counted from the input")
    ax.set_ylabel("‖dL/dθ‖ (parameter-gradient norm)")
    ax.set_title("gradient flow, compared")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def heatmap_figure(
    values: np.ndarray,
    layers: Sequence[str],
    steps: Sequence[int],
    label: str = "‖dL/dθ‖",
) -> Figure:
    """Layer × step map of a per-layer norm on a logarithmic colour scale.

    ``values`` [S, layers] over the recorded ``steps`` [S]. Rows are layers, input at
    the top; columns are recorded steps (cells span the gaps between them). Layers with
    no value at any step are left out; zeros and NaN are blank.
    """
    from matplotlib.colors import LogNorm

    v = _per_step(values, steps, "values")
    names = _check_labels(layers, v.shape[1], "layer names")
    keep = _measured_columns(v)
    data = np.ma.masked_invalid(_positive(v[:, keep]).T)  # [layers, S]
    s = np.asarray(steps, dtype=np.float64)
    if s.size > 1:
        mids = (s[1:] + s[:-1]) / 2
        edges = np.concatenate([[2 * s[0] - mids[0]], mids, [2 * s[-1] - mids[-1]]])
    else:
        edges = s[:1] + np.array([-0.5, 0.5]) if s.size else np.array([0.0, 1.0])
    fig = _figure(7.5, max(3.0, min(9.0, 1.5 + 0.18 * keep.size)))
    ax = fig.add_subplot()
    drawn = data.compressed()
    if not drawn.size:
        ax.set_title(f"{label} per layer and step: no positive value to draw")
        return fig
    norm = LogNorm(drawn.min(), drawn.max())
    mesh = ax.pcolormesh(edges, np.arange(keep.size + 1) - 0.5, data, norm=norm, cmap="magma")
    ax.set_ylim(keep.size - 0.5, -0.5)  # input at the top
    _layer_axis(ax, [names[i] for i in keep], axis="y")
    ax.set_xlabel("training step")
    ax.set_title(f"{label} per layer and step (log colour scale)" + _zeros_note(v[:, keep]))
    fig.colorbar(mesh, ax=ax, label=label)
    return fig


def gain_figure(gain: np.ndarray, layers: Sequence[str], steps: Sequence[int]) -> Figure:
    """Per-layer gain ‖dL/da₍ₗ₋₁₎‖ / ‖dL/daₗ‖ of the backward signal at chosen steps, log
    scale, with gain 1 marked: the chain rule's local factors, whose product over the
    layers is the whole network's gradient ratio.

    ``gain`` [k, layers] at ``steps`` [k] (NaN for the first layer, which has no input
    layer to pass the signal to).
    """
    g = _per_step(gain, steps, "gain")
    names = _check_labels(layers, g.shape[1], "layer names")
    keep = _measured_columns(g)
    fig = _figure()
    ax = fig.add_subplot()
    ax.axhline(1.0, color="0.5", linewidth=1, label="gain 1: passed on unchanged")
    for row, (step, colour) in enumerate(zip(steps, _step_colours(len(steps)), strict=True)):
        ax.plot(
            np.arange(keep.size),
            _positive(g[row, keep]),
            "o-",
            ms=3,
            color=colour,
            label=f"step {int(step)}",
        )
    ax.set_yscale("log")
    _layer_axis(ax, [names[i] for i in keep])
    ax.set_ylabel("gain of the backward signal")
    ax.set_title("per-layer gain (below 1 shrinks, above 1 grows)" + _zeros_note(g[:, keep]))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def saturation_figure(
    saturated: np.ndarray, dead: np.ndarray, layers: Sequence[str], step: int
) -> Figure:
    """Fractions of saturated units (sigmoid / tanh family) and of dead units (ReLU
    family) per layer at one step, as bars from 0 to 100 %.

    ``saturated`` and ``dead`` are [layers] (NaN where the layer is not of that family).
    Only layers with a value in either are drawn.
    """
    sat = np.asarray(saturated, dtype=np.float64).reshape(-1)
    dd = np.asarray(dead, dtype=np.float64).reshape(-1)
    if sat.shape != dd.shape:
        raise BackprobeError(
            f"Expected saturated and dead of the same shape [layers] but got {sat.shape} "
            f"and {dd.shape}."
        )
    names = _check_labels(layers, sat.size, "layer names")
    keep = _measured_columns(np.stack([sat, dd]))
    fig = _figure()
    ax = fig.add_subplot()
    x = np.arange(keep.size)
    ax.bar(x - 0.2, np.nan_to_num(sat[keep]) * 100, width=0.4, label="saturated", color="#9467bd")
    ax.bar(x + 0.2, np.nan_to_num(dd[keep]) * 100, width=0.4, label="dead", color="#8c564b")
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of units")
    _layer_axis(ax, [names[i] for i in keep])
    ax.set_title(f"saturated and dead units at step {int(step)}")
    ax.legend(fontsize="small")
    if not keep.size:
        ax.text(0.5, 0.5, "no activation layer probed", ha="center", transform=ax.transAxes)
    return fig


# --------------------------------------------------------------------------- through time


def _bound_rows(bound: np.ndarray | None, k: int, n: int) -> np.ndarray | None:
    """A bound over ``n`` lags, one row for all ``k`` steps or one row per step, as
    float64 [k, n]; None stays None."""
    if bound is None:
        return None
    b = np.asarray(bound, dtype=np.float64)
    if b.ndim == 1:
        b = np.broadcast_to(b, (k, b.size))
    if b.shape != (k, n):
        raise BackprobeError(
            f"Expected a bound over {n} lags, shape [{n}] or [{k}, {n}] (one row per step), "
            f"but got shape {np.shape(bound)}."
        )
    return b


def time_profile_figure(
    profile: np.ndarray,
    steps: Sequence[int],
    bound: np.ndarray | None = None,
    layer: str = "",
) -> Figure:
    """‖dL/dh_t‖ against the time step t, one line per chosen training step, log scale.

    ``profile`` [k, T] at ``steps`` [k]. ``bound`` [T] or [k, T] (per step), optional, is
    the Hochreiter / Pascanu factor (γ·λ1)^lag for lag = 0…T−1 (``hochreiter_bound``);
    NaN rows are not drawn. It is drawn
    anchored at each step's last time step, ‖dL/dh_(T−1)‖·(γ·λ1)^(T−1−t): the most a
    gradient that enters at the last step can still be at step t. (A loss that also
    reads earlier steps adds gradient there that this anchor does not include.)
    """
    p = _per_step(profile, steps, "profile")
    T = p.shape[1]
    t = np.arange(T)
    fig = _figure()
    ax = fig.add_subplot()
    colours = _step_colours(len(steps))
    for row, (step, colour) in enumerate(zip(steps, colours, strict=True)):
        ax.plot(t, _positive(p[row]), "-", color=colour, label=f"step {int(step)}")
    b = _bound_rows(bound, p.shape[0], T)
    drawn = False
    for row in range(p.shape[0]):
        last = np.flatnonzero(np.isfinite(p[row]))
        if b is None or not last.size or not np.isfinite(b[row]).any():
            continue
        end = int(last[-1])
        anchored = p[row, end] * b[row, end - t[: end + 1]]
        ax.plot(
            t[: end + 1], _positive(anchored), color=colours[row], label=BOUND_LINE, **BOUND_STYLE
        )
        drawn = True
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel("‖dL/dh_t‖")
    name = f" in {layer}" if layer else ""
    ax.set_title(f"gradient through time{name}" + _zeros_note(p))
    ax.grid(True, which="major", alpha=0.3)
    _legend_with_bound(ax, "dashed: bound ‖dL/dh_T‖·(γλ₁)^(T−t)" if drawn else None)
    return fig


def jacobian_decay_figure(
    decay: np.ndarray,
    steps: Sequence[int],
    horizon: np.ndarray | None = None,
    threshold: float = 1e-3,
    bound: np.ndarray | None = None,
    layer: str = "",
) -> Figure:
    """‖dh_T/dh_(T−lag)‖ against the lag, one line per chosen step, log scale, with the
    memory horizon marked: the lag where the decay first falls below ``threshold`` × its
    value at lag 0 (a dotted line), drawn as a vertical line per step.

    ``decay`` [k, T] over lags 0…T−1 at ``steps`` [k]; ``horizon`` [k] (inf: beyond
    the sequence, not drawn; NaN: unknown); ``bound`` [T] or [k, T], optional, the
    Pascanu bound (γ·λ1)^lag from ``hochreiter_bound``.
    """
    d = _per_step(decay, steps, "decay")
    h = np.full(d.shape[0], np.nan) if horizon is None else np.asarray(horizon, np.float64)
    if h.shape != (d.shape[0],):
        raise BackprobeError(f"Expected one horizon per step ({d.shape[0]}) but got {h.shape}.")
    lags = np.arange(d.shape[1])
    fig = _figure()
    ax = fig.add_subplot()
    for row, (step, colour) in enumerate(zip(steps, _step_colours(len(steps)), strict=True)):
        shown = "never" if np.isinf(h[row]) else ("?" if np.isnan(h[row]) else f"{h[row]:.0f}")
        ax.plot(lags, _positive(d[row]), "-", color=colour, label=f"step {int(step)}: {shown}")
        if np.isfinite(h[row]):
            ax.axvline(h[row], color=colour, linestyle=":", linewidth=1.5)
    if d.shape[1] and np.isfinite(d[:, 0]).any():
        ax.axhline(
            threshold * float(np.nanmax(d[:, 0])),
            color="0.5",
            linestyle=":",
            linewidth=1,
            label=f"{threshold:g} × lag 0",
        )
    b = _bound_rows(bound, d.shape[0], lags.size)
    drawn = False
    for row, colour in enumerate(_step_colours(len(steps))):
        if b is not None and np.isfinite(b[row]).any():
            ax.plot(lags, _positive(b[row]), color=colour, label=BOUND_LINE, **BOUND_STYLE)
            drawn = True
    ax.set_yscale("log")
    ax.set_xlabel("lag T − k (steps back in time)")
    ax.set_ylabel("‖dh_T/dh_k‖₂")
    name = f" in {layer}" if layer else ""
    ax.set_title(f"memory: how far back the state still matters{name}")
    ax.grid(True, which="major", alpha=0.3)
    bound_label = "dashed: bound (γλ₁)^lag" if drawn else None
    _legend_with_bound(ax, bound_label, title="step: memory horizon (lags)")
    return fig


# -------------------------------------------------------------------------- spectra, loss


def jacobian_spectrum_figure(spectra: Mapping[str, np.ndarray] | np.ndarray) -> Figure:
    """Singular values of Jacobians (``jacobian_singular_values``, ``[B, K]`` per name),
    each pooled and sorted descending against their rank fraction, log scale, with the
    isometry band [1/2, 2] shaded: a flat line at 1 is dynamical isometry, a steep one a
    spectrum whose directions vanish and explode at once.
    """
    from ..theory.jacobian import BAND, isometry_summary

    named = dict(spectra) if isinstance(spectra, Mapping) else {"input → output": spectra}
    fig = _figure()
    ax = fig.add_subplot()
    ax.axhspan(*BAND, color="#2ca02c", alpha=0.12, label=f"isometry band {BAND[0]:g}–{BAND[1]:g}")
    for name, svals in named.items():
        s = np.sort(np.asarray(svals, dtype=np.float64).ravel())[::-1]
        summary = isometry_summary(s)
        ax.plot(
            (np.arange(s.size) + 0.5) / s.size,
            _positive(s),
            "-",
            label=f"{name}: mean σ² {compact_number(summary.mean_squared)}, {summary.verdict}",
        )
    ax.set_yscale("log")
    ax.set_xlabel("rank / count (largest first)")
    ax.set_ylabel("singular value σ")
    ax.set_title("Jacobian singular values")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def loss_figure(
    steps: np.ndarray, loss: np.ndarray, findings: Sequence[Finding] | None = ()
) -> Figure:
    """The loss over the recorded steps (log scale when every value is positive) with a
    vertical line at each finding's step, coloured by severity and labelled by kind.

    ``steps`` and ``loss`` are [S]; findings without a step (about the whole run) are
    counted in the title.
    """
    s = np.asarray(steps, dtype=np.float64).reshape(-1)
    y = np.asarray(loss, dtype=np.float64).reshape(-1)
    if s.shape != y.shape:
        raise BackprobeError(
            f"Expected steps and loss of the same shape [S] but got {s.shape} and {y.shape}."
        )
    fig = _figure(7.5, 3.5)
    ax = fig.add_subplot()
    ax.plot(s, y, "-", color="black", linewidth=1.2, label="loss")
    finite = y[np.isfinite(y)]
    if finite.size and np.all(finite > 0):
        ax.set_yscale("log")
        _plain_log_ticks(ax)
    run_wide = 0
    labelled: set[str] = set()
    for finding in findings or ():
        if finding.step is None:
            run_wide += 1
            continue
        key = f"{finding.severity}: {finding.kind}"
        ax.axvline(
            finding.step,
            color=SEVERITY_COLOURS.get(finding.severity, "0.5"),
            linestyle="--",
            linewidth=1.2,
            label=None if key in labelled else key,
        )
        labelled.add(key)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    note = f" ({counted(run_wide, 'finding')} about the whole run)"
    ax.set_title("loss" + (note if run_wide else ""))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def compare_loss_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """Several runs' loss curves on one axes; ``curves`` maps a run's label to (steps [S],
    loss [S]). Log scale when every finite value is positive."""
    fig = _figure(7.5, 3.5)
    ax = fig.add_subplot()
    positive = True
    for label, (steps, loss) in curves.items():
        s = np.asarray(steps, dtype=np.float64).reshape(-1)
        y = np.asarray(loss, dtype=np.float64).reshape(-1)
        if s.shape != y.shape:
            raise BackprobeError(
                f"Expected steps and loss of the same shape [S] for {label!r} but got "
                f"{s.shape} and {y.shape}."
            )
        ax.plot(s, y, "-", linewidth=1.2, label=str(label))
        finite = y[np.isfinite(y)]
        positive = positive and bool(np.all(finite > 0))
    if positive and ax.get_lines():
        ax.set_yscale("log")
        _plain_log_ticks(ax)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_title("loss, compared")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


# ---------------------------------------------------------------------------- from a run


def _recorded_rows(values: np.ndarray, count: int) -> np.ndarray:
    """``count`` rows, spread evenly, among the rows of [S, T] that hold any value."""
    rows = np.flatnonzero(np.isfinite(values).any(axis=1)) if values.size else np.zeros(0, int)
    return rows[choose_steps(rows, count)]


def recurrent_figures(
    run: RunView, name: str, count: int = DEFAULT_STEP_COUNT
) -> dict[str, Figure]:
    """The time-profile and memory figures of one recurrent (sub-)layer of ``run``, with
    the Pascanu bound (γ·λ1)^lag where the run stored λ1 and γ (plain RNN cells); empty
    when no step holds a profile."""
    profile = run.time_profile(name)
    rows = _recorded_rows(profile, count)
    if not rows.size:
        return {}
    steps = run.steps[rows]
    theory = run.recurrent_theory(name)[rows]  # [k, 2]: λ1, γ at each drawn step
    eta = theory[:, 0] * theory[:, 1]

    def bound(n: int) -> np.ndarray | None:
        """(γ·λ1)^lag [k, n], the per-step factor bound of ``hochreiter_bound``."""
        if not np.isfinite(eta).any():
            return None
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            return np.power(eta[:, None], np.arange(n, dtype=np.float64))

    figures = {
        f"time_profile:{name}": time_profile_figure(
            profile[rows], steps, bound(profile.shape[1]), layer=name
        )
    }
    decay = run.jacobian_decay(name)
    if decay.size and np.isfinite(decay[rows]).any():
        figures[f"jacobian_decay:{name}"] = jacobian_decay_figure(
            decay[rows],
            steps,
            run.memory_horizon(name)[rows],
            bound=bound(decay.shape[1]),
            layer=name,
        )
    return figures


def run_figures(
    run: RunView,
    findings: Sequence[Finding] | None = (),
    steps: Sequence[int] | None = None,
    include: Sequence[str] | None = None,
) -> dict[str, Figure]:
    """The figures of a run (a Probe or a stored run), by key, in reading order.

    Keys: ``loss``, ``gradient_flow``, ``heatmap``, ``gain``, ``saturation``, then
    ``time_profile:<layer>`` and ``jacobian_decay:<layer>`` per recurrent (sub-)layer.
    ``steps`` picks the training steps the per-layer figures draw (default: up to four
    spread from the first to the last recorded; the recurrent figures draw up to four of
    the steps that hold a time profile, which may be sparser); ``include`` keeps only those keys
    (recurrent ones by prefix, e.g. ``"time_profile"``). A run with no recorded step has
    no figures.
    """
    all_steps = run.steps
    if not all_steps.size:
        return {}
    rows = (
        choose_steps(all_steps)
        if steps is None
        else np.array([run.step_index(int(s)) for s in steps], dtype=int)
    )
    chosen = all_steps[rows]
    wanted = None if include is None else set(include)

    def want(key: str) -> bool:
        return wanted is None or key.split(":")[0] in wanted

    names = run.layers
    figures: dict[str, Figure] = {}
    if want("loss"):
        figures["loss"] = loss_figure(all_steps, run.history("loss"), findings)
    grad = run.history("grad_norm")
    if want("gradient_flow"):
        figures["gradient_flow"] = gradient_flow_figure(grad[rows], names, chosen)
    if want("heatmap"):
        figures["heatmap"] = heatmap_figure(grad, names, all_steps.tolist())
    if want("gain"):
        figures["gain"] = gain_figure(run.history("gain")[rows], names, chosen)
    if want("saturation"):
        last = rows[-1]
        figures["saturation"] = saturation_figure(
            run.history("saturated")[last], run.history("dead")[last], names, int(chosen[-1])
        )
    if want("time_profile") or want("jacobian_decay"):
        for layer in run.recurrent_layers:
            for key, fig in recurrent_figures(run, layer).items():
                if want(key):
                    figures[key] = fig
    return figures


# ----------------------------------------------------------------------------- exporting


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def svg_text(fig: Figure) -> str:
    """The figure as an SVG document (text)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    return buffer.getvalue()


def save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write the figure to ``path`` as PNG or SVG, chosen by its suffix; returns the path."""
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    if kind not in ("png", "svg"):
        raise BackprobeError(
            f"Expected a figure file ending in .png or .svg but got {path.name!r}; "
            f"pass e.g. {path.stem or 'figure'}.png."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=kind, dpi=dpi)
    return path
