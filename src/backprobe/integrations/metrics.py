"""The chosen few statistics a training framework's logger gets at each recorded step.

Full per-layer data stays in the run database; a framework's logs (Lightning's
``callback_metrics`` and loggers, Hugging Face's ``log_history`` and ``report_to``
targets) get, tagged ``<prefix>/…``:

- ``grad_norm_preclip``: the global L2 norm of the gradients before clipping (what the
  frameworks log as their own ``grad_norm``), shown first;
- ``grad_norm_postclip``: the same after the framework's clipping;
- ``first_last_ratio``: the verdict's first / last gradient ratio
  (:func:`~backprobe.diagnose.depth.first_to_last_ratio`) at this step: the layer at the
  input end of the depth chain against the one nearest the loss, tied layers compared
  by their backward signal, so that a GPT-2's tied embedding and head do not read 1;
- ``grad_norm/<layer>``: the gradient norm of five layers with parameters (the first,
  second, middle, second-to-last and last);

and once training ends:

- ``verdict``: the index of the verdict's status in :data:`VERDICT_CODES`;
- ``findings/<severity>`` (``info``, ``warning``, ``error``, zero included) and
  ``findings/<kind>`` (the kinds found): how many findings the diagnosis made;
- ``findings`` (``findings_text``): the verdict and the findings as text, for the logs
  that take text (see :func:`findings_text`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..diagnose.depth import first_to_last_ratio
from ..diagnose.finding import SEVERITIES, Finding
from ..diagnose.verdict import Status, Verdict
from ..errors import ProbeConfigError
from ..store.view import USER_PREFIX, LayerInfo, MemoryRun, StepProfiles, StepSeries

#: The scalars recorded with each step around clipping, in the order they are shown.
PRECLIP, POSTCLIP = "grad_norm_preclip", "grad_norm_postclip"

#: The logged number of each verdict status (every :data:`~backprobe.diagnose.verdict.Status`).
VERDICT_CODES: tuple[Status, ...] = (
    "healthy",
    "unknown",
    "vanishing",
    "exploding",
    "nonfinite",
    "misconfigured",
)

#: What is logged by default (see :class:`LoggedMetrics`).
DEFAULT_METRICS: tuple[str, ...] = (
    PRECLIP,
    POSTCLIP,
    "first_last_ratio",
    "layer_grad_norm",
    "verdict",
    "findings",
    "findings_text",
)


def global_grad_norm(params: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The L2 norm of all of ``params``' gradients together, on their device (no
    synchronisation); None when none has a gradient."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return None
    device = grads[0].device
    norms = [torch.linalg.vector_norm(g.float()).to(device) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms))


def norm_clipped(total: torch.Tensor, max_norm: float) -> torch.Tensor:
    """The global norm left by ``torch.nn.utils.clip_grad_norm_(…, max_norm)`` on
    gradients of global norm ``total`` (its own formula)."""
    return total * torch.clamp(max_norm / (total + 1e-6), max=1.0)


def value_clipped(params: Sequence[torch.Tensor], clip_value: float) -> torch.Tensor | None:
    """The global norm left by ``torch.nn.utils.clip_grad_value_(…, clip_value)``."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return None
    clipped = [torch.linalg.vector_norm(g.float().clamp(-clip_value, clip_value)) for g in grads]
    return torch.linalg.vector_norm(torch.stack([n.to(clipped[0].device) for n in clipped]))


def shown_layers(layers: Sequence[LayerInfo]) -> list[int]:
    """Rows of the layers whose gradient norm is logged: the first, second, middle,
    second-to-last and last of those owning parameters (fewer when there are fewer)."""
    owning = [i for i, layer in enumerate(layers) if layer.n_params > 0 and layer.role != "block"]
    if not owning:
        return []
    n = len(owning)
    picks = sorted({0, min(1, n - 1), n // 2, max(n - 2, 0), n - 1})
    return [owning[p] for p in picks]


def findings_text(judged: Verdict, findings: Sequence[Finding]) -> str:
    """The verdict, then one line per finding, most severe first (severity, kind, the
    summary with its key number) and the first remedy's call: Markdown that reads as
    plain text, for TensorBoard's text tab and the logs that keep strings."""
    lines = [f"verdict at step {judged.step}: {judged}", ""]
    if not findings:
        lines.append("no findings: nothing above the thresholds")
    for finding in sorted(findings, key=lambda f: -f.severity_rank):
        lines.append(f"- [{finding.severity}] {finding.kind}: {finding.summary}")
        if finding.remedies:
            lines.append(f"  try: `{finding.remedies[0].call}`")
    return "\n".join(lines)


class LoggedMetrics:
    """A :class:`~backprobe.store.sink.StepSink` that keeps the logged statistics of the
    last recorded step (:attr:`latest`), for a callback to hand to its framework.

    Args:
        prefix: first part of every tag.
        metrics: which of :data:`DEFAULT_METRICS` to log.
    """

    def __init__(self, prefix: str = "backprobe", metrics: Sequence[str] = DEFAULT_METRICS) -> None:
        unknown = sorted(set(metrics) - set(DEFAULT_METRICS))
        if unknown:
            raise ProbeConfigError(
                f"Expected logged metrics among {', '.join(DEFAULT_METRICS)}, got "
                f"{', '.join(unknown)}; drop them (the run database keeps everything)."
            )
        self.prefix = prefix
        self.metrics = tuple(metrics)
        self._layers: list[LayerInfo] = []
        self._shown: list[int] = []
        #: (step, {tag: value}) of the last recorded step, until :meth:`take` hands it over
        self.latest: tuple[int, dict[str, float]] | None = None

    def take(self) -> tuple[int, dict[str, float]] | None:
        """The last recorded step's values, once: None when none arrived since."""
        latest, self.latest = self.latest, None
        return latest

    def final(
        self, judged: Verdict, findings: Sequence[Finding]
    ) -> tuple[dict[str, float], dict[str, str]]:
        """What the logs get once training ends, as chosen: the tagged numbers (the
        verdict's code, the count of findings of each severity and each kind found) and
        the tagged texts (the verdict and findings, :func:`findings_text`)."""
        values: dict[str, float] = {}
        if "verdict" in self.metrics:
            values[f"{self.prefix}/verdict"] = float(VERDICT_CODES.index(judged.status))
        if "findings" in self.metrics:
            for name in (*SEVERITIES, *sorted({f.kind for f in findings})):
                count = sum(name in (f.severity, f.kind) for f in findings)
                values[f"{self.prefix}/findings/{name}"] = float(count)
        texts: dict[str, str] = {}
        if "findings_text" in self.metrics:
            texts[f"{self.prefix}/findings"] = findings_text(judged, findings)
        return values, texts

    # -- the StepSink interface ----------------------------------------------------------

    def set_layers(self, layers: list[LayerInfo]) -> None:
        self._layers = list(layers)
        self._shown = shown_layers(self._layers)

    def watch(self, modules: Mapping[str, nn.Module]) -> None:
        del modules

    def append(self, step: int, series: StepSeries, profiles: StepProfiles | None = None) -> None:
        """Keeps the step's logged values (see :meth:`~backprobe.store.sink.StepSink.append`)."""
        values: dict[str, float] = {}
        for name in (PRECLIP, POSTCLIP):
            if name in self.metrics and USER_PREFIX + name in series:
                values[f"{self.prefix}/{name}"] = float(np.asarray(series[USER_PREFIX + name])[0])
        grad = np.asarray(series["grad_norm"], dtype=np.float64)
        finite = [i for i in self._shown if math.isfinite(grad[i])]
        if "first_last_ratio" in self.metrics:
            ratio = self._verdict_ratio(step, series)
            if ratio is not None and math.isfinite(ratio):
                values[f"{self.prefix}/first_last_ratio"] = ratio
        if "layer_grad_norm" in self.metrics:
            for i in finite:
                values[f"{self.prefix}/grad_norm/{self._layers[i].name}"] = float(grad[i])
        self.latest = (step, values)

    def _verdict_ratio(self, step: int, series: StepSeries) -> float | None:
        """The verdict's first / last ratio on this step alone (a one-step run, so that
        the logged number and the verdict choose their layers the same way)."""
        one_step = MemoryRun()
        one_step.set_layers(self._layers)
        one_step.append(step, {k: v for k, v in series.items() if not k.startswith(USER_PREFIX)})
        return first_to_last_ratio(one_step)

    def flush(self) -> None:
        """Nothing is buffered."""

    def close(self, status: str, error: str | None = None) -> None:
        """The run ended: nothing to release."""
