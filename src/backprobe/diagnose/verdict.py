"""The one-line verdict on a run: the diagnosis' most severe finding, in one line.

One function, :func:`verdict_of`, turns a list of findings into the verdict; every
place that shows a verdict (``backprobe show`` and ``check``, ``bp.check``'s
``CheckResult.verdict``, the HTML report's banner, the terminal summary) calls it on the
findings it shows, so a verdict never contradicts them. It is ``healthy`` only when no
warning or error stands; otherwise it names the most severe finding by its status and
summary, with the numbers that finding shows, formatted by the same function.

Each finding kind maps to one status (:data:`STATUS_OF_KIND`):

========================================================  =================
finding kinds                                             status
========================================================  =================
``no_gradient`` (nothing was measured to judge)           ``unknown``
``exploding``, ``exploding_through_time``, ``spike``,     ``exploding``
``logit_growth``, ``entropy_collapse``,
``stream_growth`` (attention, residual stream)
``nonfinite``                                             ``nonfinite``
``vanishing``, ``vanishing_through_time``, ``plateau``,   ``vanishing``
``saturation``, ``dead_units`` (they starve gradients)
``learning_rate``, ``initialisation`` (a setting is off)  ``misconfigured``
========================================================  =================

Among findings of equal severity, the table's order decides: a run that overflowed and
then underflowed is called exploding, not vanishing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .._format import counted
from ..store.view import RunView
from ._head import RunHead
from ._series import fmt
from .depth import first_to_last_ratio
from .finding import Finding, Kind
from .rules import diagnose
from .thresholds import DiagnoseThresholds
from .training import UpdateRule

Status = Literal["healthy", "vanishing", "exploding", "nonfinite", "misconfigured", "unknown"]

#: The verdict's status for each finding kind; the order ranks findings of equal severity.
STATUS_OF_KIND: dict[Kind, Status] = {
    "no_gradient": "unknown",
    "exploding": "exploding",
    "exploding_through_time": "exploding",
    "spike": "exploding",
    "logit_growth": "exploding",
    "entropy_collapse": "exploding",
    "stream_growth": "exploding",
    "nonfinite": "nonfinite",
    "vanishing": "vanishing",
    "vanishing_through_time": "vanishing",
    "plateau": "vanishing",
    "saturation": "vanishing",
    "dead_units": "vanishing",
    "learning_rate": "misconfigured",
    "initialisation": "misconfigured",
}
_PRIORITY = {kind: rank for rank, kind in enumerate(STATUS_OF_KIND)}

#: Ratios span dozens of decades: ``3e-9``, ``0.42``, ``0 (underflow)`` (the findings' format).
format_ratio = fmt


@dataclass(frozen=True)
class Verdict:
    """The verdict on one step.

    ``finding`` is the finding it names (None when healthy or unknown); ``layer`` the
    index of the last layer that finding names (where a vanishing or exploding gradient
    reaches up to, where a NaN appeared); ``ratio`` the first / last gradient ratio of
    the depth profile (the input end against the layer nearest the loss, median over the
    recorded steps up to ``step``; None when fewer than two layers are measured).
    """

    status: Status
    step: int
    message: str
    layer: int | None = None
    ratio: float | None = None
    finding: Finding | None = None

    def __str__(self) -> str:
        return self.message


def most_severe(findings: Sequence[Finding]) -> Finding | None:
    """The finding a verdict names: a warning or error, most severe first, then by the
    order of :data:`STATUS_OF_KIND`; None when only info (or nothing) stands."""
    standing = [f for f in findings if f.severity != "info"]
    if not standing:
        return None
    return min(standing, key=lambda f: (-f.severity_rank, _PRIORITY[f.kind]))


def verdict_of(
    findings: Sequence[Finding],
    step: int,
    layers: Sequence[str] = (),
    ratio: float | None = None,
) -> Verdict:
    """The verdict at ``step`` from the diagnosis ``findings`` of the steps up to it.

    ``layers`` (the run's layer names) turn the named layer into an index; ``ratio`` is
    the first / last gradient ratio the healthy line shows (see
    :func:`~backprobe.diagnose.depth.first_to_last_ratio`)."""
    top = most_severe(findings)
    if top is None:
        if ratio is None:
            return Verdict(
                "unknown",
                step,
                f"step {step}: no warning or error, but fewer than two layers with "
                "gradients: nothing to compare",
            )
        return Verdict(
            "healthy",
            step,
            f"healthy: first/last gradient ratio {fmt(ratio)}, no warning or error",
            ratio=ratio,
        )
    status = STATUS_OF_KIND[top.kind]
    named = [n for n in top.where.get("layers", ()) if n in layers]
    message = top.summary if top.summary.startswith(status) else f"{status}: {top.summary}"
    others = sum(f.severity != "info" for f in findings) - 1
    if others:
        message += f" (and {counted(others, 'more warning or error', 'more warnings or errors')})"
    return Verdict(
        status,
        step,
        message,
        layer=list(layers).index(named[-1]) if named else None,
        ratio=ratio,
        finding=top,
    )


def verdict(
    run: RunView,
    step: int | None = None,
    thresholds: DiagnoseThresholds | None = None,
    lr: float | None = None,
    optimizer: UpdateRule = "sgd",
) -> Verdict:
    """The verdict on ``run`` (a Probe or a stored run) at a recorded step (default: the
    last one): :func:`verdict_of` over the diagnosis of the steps up to it. ``lr`` and
    ``optimizer`` as for :func:`~backprobe.diagnose.rules.diagnose`: give the ones given
    to ``bp.findings`` and the verdict names one of those findings."""
    row = run.step_index(step)
    head = run if row == run.steps.size - 1 else RunHead(run, row + 1)
    findings = diagnose(head, thresholds, lr=lr, optimizer=optimizer)
    return verdict_of(findings, int(run.steps[row]), run.layers, first_to_last_ratio(head))
