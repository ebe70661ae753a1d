"""Spikes: a step whose gradient or loss jumped far above the run's recent level.

Read from the sentinel (:mod:`~backprobe.store.sentinel`: every step, recorded or not),
so the spike step itself has its numbers. Each step is compared with a robust baseline
of the steps before it: the median and the MAD (median absolute deviation, ×1.4826: a
standard deviation for normal data) of the last ``spike_window`` steps, once they hold
``spike_warmup`` values, so that the first steps of a run, where everything moves, are
not judged. Gradient norms are compared on a log scale (a norm's noise is relative). A
step is a spike when

- the global gradient norm, or one layer's, is at least ``spike_ratio`` times its
  running median *and* ``spike_z`` robust standard deviations of its log above it (both:
  the ratio keeps a calm series' small wobbles out, the deviation a noisy one's); a layer
  counts only when its gradient is at least ``spike_layer_share`` of the step's global
  norm, so that a spike moves the update (a small layer's gradient, an attention key
  projection early in training, has a heavy tail of its own that moves nothing);
- or the loss or the gradient is non-finite (a GradScaler's overflow aside: the scaler
  skips those steps itself).

The loss's rise against its own running median is reported, not judged: a small batch's
loss has a heavy tail (one hard batch at five times the median is ordinary in a clean
regression), while its gradient norm stays within the bar.

Its layers are those whose own gradient norm crossed the bar, most risen first (or,
when none did alone, the three that rose most); its samples are named when the gradient
at the model's output rose ``spike_sample_ratio`` times above its running median too:
the fewest of the step's largest per-sample output gradients that carry half of its
squared norm (none when more than :data:`~backprobe.store.sentinel.TOP_SAMPLES` are
needed: the rise is spread over the batch, not carried by a few samples).

:func:`find_spikes` judges a stored series; :class:`SpikeDetector` judges each step as it
ends (what a :class:`~backprobe.Guard` acts on), with the same baseline and the same bars
on the same stored values, so both name the same steps.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..store.sentinel import SentinelSeries
from ..store.view import RunView
from . import advice
from ._series import fmt, span
from .finding import Finding
from .thresholds import DiagnoseThresholds

#: Columns of the judged signals: the loss, the logs of the global and the output
#: gradient norms, then the log of each layer's gradient norm.
LOSS, GRAD, OUTPUT = 0, 1, 2
_LAYERS = 3
#: 1.4826·MAD estimates the standard deviation of normally distributed values.
MAD_TO_STD = 1.4826
#: Spike findings per run: the largest episodes (each finding counts them all).
MAX_FINDINGS = 3
#: Layers a spike names at most.
MAX_LAYERS = 5
#: Values judged per chunk of the offline baseline (bounds its memory).
_CHUNK_VALUES = 1 << 21


def signals(series: SentinelSeries) -> np.ndarray:
    """The judged signals, float64 [N, 3 + layers] (see :data:`LOSS`): NaN where a value
    is non-finite, or a norm is not positive (no log)."""
    norms = np.column_stack(
        [series.field("grad_norm"), series.field("out_grad_norm"), series.layer_grad_norm]
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(np.isfinite(norms) & (norms > 0), np.log(norms), np.nan)
    loss = series.field("loss")
    return np.column_stack([np.where(np.isfinite(loss), loss, np.nan), logs])


def _median_last(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median over the last axis ignoring NaN, and how many values it saw (NaN where
    none)."""
    ordered = np.sort(values, axis=-1)  # NaN last
    count = np.sum(~np.isnan(values), axis=-1)
    low = np.maximum(count - 1, 0) // 2
    high = count // 2
    a = np.take_along_axis(ordered, low[..., None], axis=-1)[..., 0]
    b = np.take_along_axis(ordered, np.minimum(high, values.shape[-1] - 1)[..., None], -1)
    median = (a + b[..., 0]) / 2
    return np.where(count > 0, median, np.nan), count


def baselines(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per window [..., W] of past values: their median, robust standard deviation
    (1.4826·MAD) and how many finite values they hold."""
    median, count = _median_last(windows)
    with np.errstate(invalid="ignore"):
        mad, _ = _median_last(np.abs(windows - median[..., None]))
    return median, MAD_TO_STD * mad, count


def running_baselines(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`baselines` of each row of ``x`` [N, K] over the ``window`` rows before it
    (fewer at the start), each [N, K]."""
    n, k = x.shape
    padded = np.concatenate([np.full((window, k), np.nan), x])
    out = [np.empty((n, k)) for _ in range(3)]
    chunk = max(1, _CHUNK_VALUES // max(1, k * window))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        windows = sliding_window_view(padded[start : stop + window - 1], window, axis=0)
        for target, part in zip(out, baselines(windows), strict=True):
            target[start:stop] = part
    return out[0], out[1], out[2]


def crossings(
    x: np.ndarray, median: np.ndarray, spread: np.ndarray, count: np.ndarray, t: DiagnoseThresholds
) -> np.ndarray:
    """bool [N, K]: whether each norm crossed its bar: a finite value, judged after
    ``spike_warmup`` finite values, whose log rose above its baseline by at least the bar
    (the loss's column is computed alike and not used)."""
    rise = x - median
    bar = np.maximum(t.spike_z * spread, math.log(t.spike_ratio))
    judged = (count >= t.spike_warmup) & np.isfinite(rise)
    with np.errstate(invalid="ignore"):
        return judged & (rise >= bar)


def carrying(series: SentinelSeries, t: DiagnoseThresholds) -> np.ndarray:
    """bool [N, layers]: layers whose gradient norm is at least ``spike_layer_share`` of
    the step's global norm (they can move the update)."""
    with np.errstate(invalid="ignore"):
        share = series.layer_grad_norm >= t.spike_layer_share * series.field("grad_norm")[:, None]
    return share


def nonfinite_steps(series: SentinelSeries, loss_seen: bool = False) -> np.ndarray:
    """bool [N]: steps whose loss is infinite, or NaN after a finite one (``loss_seen``:
    one came before the series), or whose gradient is non-finite without a GradScaler
    (a scaler skips its overflow steps itself)."""
    loss = series.field("loss")
    finite = np.isfinite(loss)
    before = loss_seen | np.concatenate(([False], np.cumsum(finite)[:-1] > 0))
    grad = series.field("grad_norm")
    scaled = np.isfinite(series.field("scale"))
    bad_grad = (series.field("gradients") > 0) & ~np.isfinite(grad) & ~scaled
    return np.isinf(loss) | (np.isnan(loss) & before) | bad_grad


@dataclass(frozen=True)
class Spike:
    """One spike step, as :func:`find_spikes` and :class:`SpikeDetector` judge it.

    ``grad_ratio`` / ``loss_ratio`` / ``output_ratio``: the global gradient norm, the
    loss and the output-gradient norm against their running medians (NaN when not
    judged); ``baseline_grad_norm``: the global norm's running median; ``layers``: (name,
    ratio to its own running median), most risen first; ``samples``: indices (along the
    output's first dimension, over the step's forwards) of the samples carrying it and
    ``sample_share``, the share of the squared output-gradient norm they carry.
    """

    step: int
    nonfinite: bool
    crossed: tuple[str, ...]  # "grad_norm", "layer": what crossed its bar
    grad_ratio: float
    loss_ratio: float
    output_ratio: float
    baseline_grad_norm: float
    layers: tuple[tuple[str, float], ...]
    samples: tuple[int, ...]
    sample_share: float


def _times(log_rise: float) -> float:
    """A log rise as a ratio (overflow-safe)."""
    return math.exp(min(float(log_rise), 700.0))


def _carriers(
    series: SentinelSeries, row: int, nonfinite: bool, output_rose: bool
) -> tuple[tuple[int, ...], float]:
    """The samples carrying the spike at ``row`` and the share of the output gradient's
    squared norm they carry (see the module docstring)."""
    index, norms = series.top_samples[row], series.top_norms[row]
    kept = index >= 0
    index, norms = index[kept], norms[kept]
    samples = np.nan_to_num(series.field("samples")[row])
    bad = ~np.isfinite(norms)
    if nonfinite and 0 < bad.sum() < samples:  # a minority of the samples went non-finite
        return tuple(int(i) for i in index[bad]), math.nan
    total = float(series.field("out_grad_norm")[row]) ** 2
    if not output_rose or bad.any() or not total > 0:
        return (), math.nan
    share = np.cumsum(norms * norms) / total
    enough = np.flatnonzero(share >= 0.5)
    if not enough.size:
        return (), float(share[-1]) if share.size else math.nan
    last = int(enough[0])
    return tuple(int(i) for i in index[: last + 1]), float(share[last])


def _named_layers(
    series: SentinelSeries,
    row: int,
    rise: np.ndarray,
    judged: np.ndarray,
    crossed: np.ndarray,
    seen: np.ndarray,
    t: DiagnoseThresholds,
) -> tuple[tuple[str, float], ...]:
    """(name, ratio) of the layers a spike names: those that crossed their bar, most
    risen first, else the three that rose most among those carrying ``spike_layer_share``
    of the gradient (among all when none does); first, the layers whose norm is
    non-finite where the baseline had (``seen``) finite ones."""
    broken = np.flatnonzero(seen & ~np.isfinite(series.layer_grad_norm[row]))
    if broken.size:
        return tuple((series.layers[c], math.inf) for c in broken[:MAX_LAYERS])
    rose = judged & (rise > 0)
    candidates = np.flatnonzero(rose & carrying(series, t)[row])
    if not candidates.size:
        candidates = np.flatnonzero(rose)
    ranked = candidates[np.argsort(-rise[candidates], kind="stable")]
    named = [c for c in ranked if crossed[c]][:MAX_LAYERS] or list(ranked[:3])
    return tuple((series.layers[c], _times(rise[c])) for c in named)


def _spike_at(
    series: SentinelSeries,
    row: int,
    x: np.ndarray,
    median: np.ndarray,
    count: np.ndarray,
    crossed: np.ndarray,
    nonfinite: bool,
    t: DiagnoseThresholds,
) -> Spike:
    """The :class:`Spike` of ``row`` from its signals, baselines and crossings [K]."""
    rise = x - median
    judged = (count >= t.spike_warmup) & np.isfinite(rise)
    layers = slice(_LAYERS, None)
    output_rose = bool(judged[OUTPUT]) and rise[OUTPUT] >= math.log(t.spike_sample_ratio)
    samples, share = _carriers(series, row, nonfinite, output_rose)
    what = ["grad_norm"] if crossed[GRAD] else []
    if crossed[layers].any():
        what.append("layer")
    return Spike(
        step=int(series.steps[row]),
        nonfinite=nonfinite,
        crossed=tuple(what),
        grad_ratio=_times(rise[GRAD]) if judged[GRAD] else math.nan,
        loss_ratio=float(x[LOSS] / median[LOSS]) if judged[LOSS] and median[LOSS] > 0 else math.nan,
        output_ratio=_times(rise[OUTPUT]) if judged[OUTPUT] else math.nan,
        baseline_grad_norm=math.exp(median[GRAD]) if np.isfinite(median[GRAD]) else math.nan,
        layers=_named_layers(
            series, row, rise[layers], judged[layers], crossed[layers], count[layers] > 0, t
        ),
        samples=samples,
        sample_share=share,
    )


def find_spikes(series: SentinelSeries, t: DiagnoseThresholds | None = None) -> list[Spike]:
    """Every spike step of ``series``, in order (see the module docstring)."""
    t = t or DiagnoseThresholds()
    if not len(series):
        return []
    x = signals(series)
    median, spread, count = running_baselines(x, t.spike_window)
    crossed = crossings(x, median, spread, count, t)
    crossed[:, _LAYERS:] &= carrying(series, t)
    bad = nonfinite_steps(series)
    hit = bad | crossed[:, GRAD] | crossed[:, _LAYERS:].any(axis=1)
    return [
        _spike_at(series, int(r), x[r], median[r], count[r], crossed[r], bool(bad[r]), t)
        for r in np.flatnonzero(hit)
    ]


class SpikeDetector:
    """Judges each step as it ends, as :func:`find_spikes` judges the stored series
    afterwards: :meth:`observe` takes the step's stored sentinel row and returns its
    :class:`Spike`, or None."""

    def __init__(self, layers: tuple[str, ...], thresholds: DiagnoseThresholds | None = None):
        self.t = thresholds or DiagnoseThresholds()
        self.layers = tuple(layers)
        self._past: deque[np.ndarray] = deque(maxlen=self.t.spike_window)
        self._loss_seen = False

    def observe(self, step: int, row: np.ndarray) -> Spike | None:
        """Judge step ``step`` from its sentinel ``row`` (as stored: float32), then take
        it into the baseline."""
        series = SentinelSeries.from_rows(np.asarray([step]), row.reshape(1, -1), self.layers)
        x = signals(series)
        k, w = x.shape[1], self.t.spike_window
        window = np.full((1, k, w), np.nan)
        if self._past:
            window[0, :, w - len(self._past) :] = np.stack(self._past, axis=1)
        median, spread, count = baselines(window)
        crossed = crossings(x, median, spread, count, self.t)
        crossed[:, _LAYERS:] &= carrying(series, self.t)
        bad = bool(nonfinite_steps(series, self._loss_seen)[0])
        self._past.append(x[0])
        self._loss_seen = self._loss_seen or bool(np.isfinite(series.field("loss")[0]))
        if not (bad or crossed[0, GRAD] or crossed[0, _LAYERS:].any()):
            return None
        return _spike_at(series, 0, x[0], median[0], count[0], crossed[0], bad, self.t)


def _episodes(spikes: list[Spike], steps: np.ndarray) -> list[list[Spike]]:
    """Spikes of consecutive sentinel steps grouped: one episode each."""
    row = {int(s): i for i, s in enumerate(steps)}
    episodes: list[list[Spike]] = []
    for spike in spikes:
        if episodes and row[spike.step] == row[episodes[-1][-1].step] + 1:
            episodes[-1].append(spike)
        else:
            episodes.append([spike])
    return episodes


def _below(ratio: float, bar: float) -> bool:
    """A ratio not judged (NaN) or below ``bar``."""
    return not math.isfinite(ratio) or ratio < bar


def _got_over(series: SentinelSeries, episode: list[Spike], t: DiagnoseThresholds) -> bool:
    """Whether the run got over a spike episode (see
    :class:`~backprobe.diagnose.thresholds.DiagnoseThresholds`): its loss back near its
    running median later in the run, or a rise of single layers only."""
    first = episode[0]
    if any(s.nonfinite for s in episode):
        return False
    if all(
        _below(s.grad_ratio, t.spike_ratio) and _below(s.loss_ratio, t.spike_recovered)
        for s in episode
    ):
        return True  # single layers rose; the global norm and the loss hardly did
    if not math.isfinite(first.loss_ratio) or first.loss_ratio <= 0:
        return False
    loss = series.field("loss")
    baseline = loss[int(np.searchsorted(series.steps, first.step))] / first.loss_ratio
    after = loss[int(np.searchsorted(series.steps, episode[-1].step)) + 1 :]
    after = after[np.isfinite(after)]
    if after.size < t.spike_recovery or not math.isfinite(baseline):
        return False
    medians = np.median(sliding_window_view(after, t.spike_recovery), axis=1)
    return bool((medians <= t.spike_recovered * baseline).any())


def _strength(episode: list[Spike]) -> float:
    """How far an episode's largest rise went: non-finite first, then by ratio."""
    ratios = [r for s in episode for r in (s.grad_ratio, s.loss_ratio, *(v for _, v in s.layers))]
    finite = [r for r in ratios if math.isfinite(r)]
    return math.inf if any(s.nonfinite for s in episode) else max(finite, default=0.0)


def _describe(spike: Spike) -> tuple[str, str]:
    """(what rose, where) for a spike's summary."""
    if spike.nonfinite:
        rose = "the loss or the gradient turned non-finite"
    else:
        parts = []
        if math.isfinite(spike.grad_ratio):
            parts.append(f"gradient norm ×{fmt(spike.grad_ratio)}")
        if math.isfinite(spike.loss_ratio):
            parts.append(f"loss ×{fmt(spike.loss_ratio)}")
        rose = (", ".join(parts) or "a layer's gradient norm rose") + (
            " their running medians" if len(parts) > 1 else " its running median" if parts else ""
        )
    names = [name for name, _ in spike.layers]
    where = f", most in {span(names)}" if names else ""
    if spike.samples:
        listed = ", ".join(str(i) for i in spike.samples)
        where += f"; carried by sample{'s' if len(spike.samples) > 1 else ''} {listed}"
    return rose, where


def _cause(spike: Spike, window: int) -> str:
    if spike.nonfinite:
        return (
            f"At step {spike.step} the loss or the gradient was NaN or infinite: one "
            "update with it makes every weight it reaches non-finite. A bad batch (an "
            "outlier, a division by zero in the loss) or an overflow caused it."
        )
    names = [name for name, _ in spike.layers]
    head = (
        f"At step {spike.step} the gradient rose far above its running median over the "
        f"last {window} steps"
    )
    if spike.samples:
        share = f" {100 * spike.sample_share:.0f} % of" if math.isfinite(spike.sample_share) else ""
        which = (
            f"sample {spike.samples[0]} of the batch carries"
            if len(spike.samples) == 1
            else f"samples {', '.join(map(str, spike.samples))} of the batch carry"
        )
        return (
            f"{head}, and {which}{share} the gradient at the model's output: outlying "
            "samples (corrupted, mislabelled or extreme) pulled the whole update. One such "
            "batch can undo many steps of training."
        )
    return (
        f"{head}, most in {span(names) if names else 'no single layer'}, while the "
        "gradient at the model's output was spread over the batch: an instability of the "
        "network itself (a learning rate too large for these layers, growing attention "
        "logits, no warm-up), not a few bad samples."
    )


def spike_findings(run: RunView, t: DiagnoseThresholds) -> list[Finding]:
    """One ``spike`` finding per episode of consecutive spike steps (the
    :data:`MAX_FINDINGS` strongest), named by its first step; ``info`` when a Guard
    acted on every step of it, else a warning. A run that turns non-finite at a step
    and stays so to its end gets no spike for it: that is the ``nonfinite`` finding."""
    series = run.sentinel
    spikes = find_spikes(series, t)
    if not spikes:
        return []
    episodes = _episodes(spikes, series.steps)
    if episodes[-1][0].nonfinite and episodes[-1][-1].step == series.steps[-1]:
        episodes.pop()  # NaN from a step to the end: the ``nonfinite`` finding's to tell
    if not episodes:
        return []
    guarded = {e.step for e in run.events}
    strongest = sorted(episodes, key=_strength, reverse=True)[:MAX_FINDINGS]
    findings = []
    for episode in sorted(strongest, key=lambda e: e[0].step):
        first = episode[0]
        handled = all(s.step in guarded for s in episode)
        survived = not handled and _got_over(series, episode, t)
        rose, where = _describe(first)
        more = f" over {len(episode)} steps" if len(episode) > 1 else ""
        of = f" (one of {len(episodes)} spike episodes)" if len(episodes) > 1 else ""
        bad_batch = bool(first.samples) or first.nonfinite
        findings.append(
            Finding(
                kind="spike",
                severity="info" if handled or survived else "warning",
                summary=f"spike at step {first.step}{more}: {rose}{where}{of}"
                + ("; the guard acted on it" if handled else "")
                + ("; the run got over it" if survived else ""),
                where={
                    "step": first.step,
                    "layers": [name for name, _ in first.layers],
                    "samples": list(first.samples),
                },
                evidence={
                    "steps": [s.step for s in episode][:20],
                    "grad_norm_ratio": _finite(first.grad_ratio),
                    "loss_ratio": _finite(first.loss_ratio),
                    "output_grad_ratio": _finite(first.output_ratio),
                    "baseline_grad_norm": _finite(first.baseline_grad_norm),
                    "layer_ratios": {n: _finite(r) for n, r in first.layers},
                    "sample_share": _finite(first.sample_share),
                    "nonfinite": first.nonfinite,
                    "spike_episodes": len(episodes),
                    "guarded": handled,
                    "window": t.spike_window,
                },
                cause=_cause(first, t.spike_window),
                remedies=advice.spike_remedies(bad_batch),
                references=advice.SPIKE_REFERENCES,
                step=first.step,
            )
        )
    return findings


def _finite(value: float) -> float | None:
    """A number for ``Finding.evidence`` (JSON): None for NaN and infinities."""
    return float(value) if math.isfinite(value) else None
