"""Rules on attention and the residual stream: logit growth, entropy collapse, stream
growth.

They read what the probe records at recorded steps (:mod:`backprobe.probe.attention`):
each attention layer's largest logit and mean entropy, the model output's largest
|logit|, and each residual block's stream (its RMS, √(act_mean² + act_std²)). A window of
``trend_window`` recorded steps at the start of the run is compared with one at the end
(halves of the run when it is shorter than two windows), each summarised by its median:

* ``logit_growth``: a layer's largest attention logit ends at or above
  ``attn_logit_warning`` and at least ``logit_rise`` times where it started — the
  instability of Dehghani et al. 2023 (ViT-22B) that Wortsman et al. 2023 reproduce in
  small models at high learning rates; QK-norm is its cure. In a model with attention,
  the output's largest |logit| at or above ``output_logit_warning`` with the same rise
  is the output-logit divergence that the z-loss prevents.
* ``entropy_collapse``: a layer's mean attention entropy ends below ``entropy_collapse``
  of where it started: attention has turned (nearly) one-hot (Zhai et al. 2023).
* ``stream_growth``: a residual block's stream RMS ends ``stream_growth`` times above its
  RMS at the first recorded step: a warning alongside logit growth or entropy collapse,
  else information.
"""

from __future__ import annotations

import numpy as np

from ..store.view import RunView
from . import advice
from ._series import clean, fmt, span, typical
from .finding import Finding
from .thresholds import DiagnoseThresholds


def trend(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``values`` [S, ...]: the median over the first and over the last
    ``window`` rows (over the first and last halves when there are fewer than two
    windows of rows); NaN-aware."""
    size = min(window, max(1, values.shape[0] // 2))
    return typical(values[:size]), typical(values[-size:])


def _hits(layers: list[str], hit: np.ndarray) -> list[tuple[str, int]]:
    """(name, column) of each column of ``hit`` that is True; ``layers`` names the
    columns."""
    return [(layers[i], int(i)) for i in np.flatnonzero(hit)]


def _by_name(hits: list[tuple[str, int]], values: np.ndarray) -> dict[str, float | None]:
    """``values`` at the hit columns, by layer name (for ``Finding.evidence``)."""
    return {name: clean(values[i]) for name, i in hits}


def _logit_growth(run: RunView, t: DiagnoseThresholds) -> list[Finding]:
    peak = run.history("attn_logit_max")
    if not np.isfinite(peak).any():
        return []
    start, end = trend(peak, t.trend_window)
    with np.errstate(invalid="ignore"):
        hit = (end >= t.attn_logit_warning) & (end >= t.logit_rise * start)
    findings = []
    if hit.any():
        hits = _hits(run.layers, hit)
        names = [name for name, _ in hits]
        worst = int(np.nanargmax(np.where(hit, end, np.nan)))
        findings.append(
            Finding(
                kind="logit_growth",
                severity="warning",
                summary=(
                    f"attention logits grew to {fmt(end[worst])} (from {fmt(start[worst])}) "
                    f"in {span(names)}"
                ),
                where={"layers": names},
                evidence={
                    "attn_logit_max_start": _by_name(hits, start),
                    "attn_logit_max_end": _by_name(hits, end),
                    "threshold": t.attn_logit_warning,
                },
                cause=(
                    f"The largest attention logit q·k/√d reached {fmt(end[worst])}: the "
                    "query and key weights grew together, and the softmax over such logits "
                    "is nearly one-hot, so attention stops mixing and its gradient vanishes "
                    "while the loss becomes unstable (Dehghani et al. 2023; Wortsman et al. "
                    "2023)."
                ),
                remedies=(
                    advice.QK_NORM,
                    advice.lower_lr(),
                    advice.ATTENTION_WARMUP,
                    advice.SIGMA_REPARAM,
                ),
                references=advice.ATTENTION_REFERENCES,
                step=int(run.steps[-1]),
            )
        )
    output = run.history("output_max")[:, 0]
    if np.isfinite(output).any():
        first, last = (float(v) for v in trend(output, t.trend_window))
        if last >= t.output_logit_warning and last >= t.logit_rise * first:
            findings.append(
                Finding(
                    kind="logit_growth",
                    severity="warning",
                    summary=(f"output logits grew to {fmt(last)} (from {fmt(first)})"),
                    where={"output": True},
                    evidence={
                        "output_max_start": clean(first),
                        "output_max_end": clean(last),
                        "output_rms_end": clean(
                            float(trend(run.history("output_rms")[:, 0], t.trend_window)[1])
                        ),
                        "threshold": t.output_logit_warning,
                    },
                    cause=(
                        f"The model's largest output logit reached {fmt(last)}: the "
                        "logits drift away from the log-probabilities (log Z far from 0), "
                        "which low precision rounds coarsely and which ends large runs in "
                        "divergence (Wortsman et al. 2023)."
                    ),
                    remedies=(advice.Z_LOSS, advice.lower_lr(), advice.WEIGHT_DECAY),
                    references=advice.OUTPUT_LOGIT_REFERENCES,
                    step=int(run.steps[-1]),
                )
            )
    return findings


def _entropy_collapse(run: RunView, t: DiagnoseThresholds) -> list[Finding]:
    entropy = run.history("attn_entropy")
    if run.steps.size < 2 or not np.isfinite(entropy).any():
        return []
    start, end = trend(entropy, t.trend_window)
    with np.errstate(invalid="ignore"):
        hit = end < t.entropy_collapse * start
    if not hit.any():
        return []
    hits = _hits(run.layers, hit)
    names = [name for name, _ in hits]
    lowest = int(np.nanargmin(np.where(hit, end / start, np.nan)))
    lowest_head = trend(run.history("attn_entropy_min"), t.trend_window)[1]
    return [
        Finding(
            kind="entropy_collapse",
            severity="warning",
            summary=(
                f"attention entropy collapsed to {fmt(end[lowest])} nats (from "
                f"{fmt(start[lowest])}) in {span(names)}"
            ),
            where={"layers": names},
            evidence={
                "attn_entropy_start": _by_name(hits, start),
                "attn_entropy_end": _by_name(hits, end),
                "attn_entropy_min_end": _by_name(hits, lowest_head),
                "fraction": t.entropy_collapse,
            },
            cause=(
                f"Each query of {names[0]} spreads its attention over about "
                f"e^{fmt(end[lowest])} ≈ {fmt(float(np.exp(end[lowest])))} keys, against "
                f"{fmt(float(np.exp(start[lowest])))} at the start: the attention has turned "
                "one-hot across the layer. Such entropy collapse goes with unstable training "
                "and divergence (Zhai et al. 2023); the logits behind it grew."
            ),
            remedies=(
                advice.QK_NORM,
                advice.SIGMA_REPARAM,
                advice.lower_lr(),
                advice.ATTENTION_WARMUP,
            ),
            references=advice.ATTENTION_REFERENCES,
            step=int(run.steps[-1]),
        )
    ]


def _stream_growth(run: RunView, t: DiagnoseThresholds, unstable: bool) -> list[Finding]:
    blocks = [layer.index for layer in run.layer_info if layer.role == "block"]
    if not blocks or run.steps.size < 2:
        return []
    rms = np.hypot(run.history("act_mean"), run.history("act_std"))[:, blocks]
    measured = np.isfinite(rms).any(axis=1)
    if not measured.any():
        return []
    first = rms[np.flatnonzero(measured)[0]]
    end = trend(rms, t.trend_window)[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        growth = end / first
        hit = growth >= t.stream_growth
    if not hit.any():
        return []
    hits = _hits([run.layers[b] for b in blocks], hit)
    names = [name for name, _ in hits]
    top = int(np.nanargmax(np.where(hit, growth, np.nan)))
    return [
        Finding(
            kind="stream_growth",
            severity="warning" if unstable else "info",
            summary=(
                f"the residual stream grew ×{fmt(growth[top])} (RMS {fmt(first[top])} → "
                f"{fmt(end[top])}) in {span(names)}"
            ),
            where={"layers": names},
            evidence={
                "stream_rms_first": _by_name(hits, first),
                "stream_rms_end": _by_name(hits, end),
                "growth": t.stream_growth,
            },
            cause=(
                "The residual stream, the sum every block adds its output to, grew by "
                f"×{fmt(growth[top])} since the first recorded step: each block's "
                "contribution is now small against it (in bfloat16 an addition loses what "
                "is below 1/256 of the stream), and normalisation layers divide by an ever "
                "larger scale."
                + (
                    " It grows here alongside the attention's logits or collapse."
                    if unstable
                    else ""
                )
            ),
            remedies=(advice.lower_lr(), advice.ATTENTION_WARMUP, advice.WEIGHT_DECAY),
            references=advice.ATTENTION_REFERENCES[:2],
            step=int(run.steps[-1]),
        )
    ]


def attention_findings(run: RunView, t: DiagnoseThresholds) -> list[Finding]:
    """Logit growth, entropy collapse and stream growth on ``run``'s recorded steps."""
    if run.steps.size == 0:
        return []
    findings = _logit_growth(run, t) + _entropy_collapse(run, t)
    return findings + _stream_growth(run, t, unstable=bool(findings))
