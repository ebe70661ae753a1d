"""All rules on a run's measurements, in one call: ``diagnose(run) -> list[Finding]``.

``run`` is anything with the read API of :class:`~backprobe.store.view.RunView`: a live
:class:`~backprobe.Probe`, ``bp.open_run(db, run)`` (also a crashed or interrupted run:
the rules read what was recorded up to its last flush), or the one-step run of
``bp.check``. Findings come back most severe first.
"""

from __future__ import annotations

from ..store.view import RunView
from ._head import RunHead
from .attention import attention_findings
from .blowup import blowup_findings, find_blowup
from .depth import dead_findings, depth_findings, saturation_findings
from .finding import Finding
from .misuse import no_gradient_findings
from .spikes import spike_findings
from .thresholds import DiagnoseThresholds
from .training import (
    UpdateRule,
    first_nonfinite_row,
    growth_before,
    learning_rate_findings,
    nonfinite_findings,
    plateau_findings,
)


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first; the rules' order among equals (stable)."""
    return sorted(findings, key=lambda f: -f.severity_rank)


def diagnose(
    run: RunView,
    thresholds: DiagnoseThresholds | None = None,
    lr: float | None = None,
    optimizer: UpdateRule = "sgd",
) -> list[Finding]:
    """Every finding the rules make on ``run``'s recorded steps.

    ``lr`` (and ``optimizer``, ``"sgd"`` or ``"adam"``) let the learning-rate rule
    estimate the update size; see :mod:`backprobe.diagnose.training`. A run with no
    recorded step has no finding but its spikes. After the first non-finite step only the
    non-finite, learning-rate and spike rules look further (spikes are judged on every
    step's sentinel values, :mod:`backprobe.diagnose.spikes`); after a blow-up of the
    gradient norm (see :mod:`backprobe.diagnose.blowup`) the other rules read only the
    steps up to where its growth began; steps without any gradient are named
    (``no_gradient``), not judged.
    """
    t = thresholds or DiagnoseThresholds()
    if run.steps.size == 0:  # the sentinel's every-step values may hold spikes still
        return sort_findings(spike_findings(run, t))
    from .through_time import through_time_findings

    findings: list[Finding] = no_gradient_findings(run)
    findings += nonfinite_findings(run, t)
    findings += learning_rate_findings(run, t, lr=lr, optimizer=optimizer)
    stop = first_nonfinite_row(run)
    growth = None if stop is None else growth_before(run, stop, t.growth_window)[0]
    blowup = find_blowup(run, t, stop, growth)
    findings += blowup_findings(run, t, blowup, None if stop is None else int(run.steps[stop]))
    findings += spike_findings(run, t)
    if blowup is not None:
        stop = blowup.began + 1
    finite = run if stop is None else RunHead(run, stop)
    if finite.steps.size:
        findings += depth_findings(finite, t)
        findings += through_time_findings(finite, t)
        findings += saturation_findings(finite, t)
        findings += dead_findings(finite, t)
        findings += plateau_findings(finite, t)
        findings += attention_findings(finite, t)
    return sort_findings(findings)
