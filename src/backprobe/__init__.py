"""backprobe: see, explain and cure vanishing and exploding gradients in PyTorch.

    import backprobe as bp
    probe = bp.Probe(model)
    with probe:
        for x, y in loader:
            loss = loss_fn(model(x), y); loss.backward()
            probe.step(loss)
            opt.step(); opt.zero_grad()
    bp.summary(probe)          # or bp.findings(probe), bp.write_report(probe, "r.html")

Names are imported on first use, so that ``backprobe --help`` does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import Where, lazy_names
from ._version import __version__
from .errors import BackprobeError

if TYPE_CHECKING:
    from .diagnose.check import check
    from .diagnose.finding import Finding, Remedy
    from .diagnose.prescribe import Prescription, prescribe
    from .diagnose.rules import diagnose as findings
    from .diagnose.verdict import Verdict, verdict
    from .probe import Probe
    from .remedies.guard import Guard
    from .report.html import write_report
    from .report.text import print_summary as summary
    from .store import open_run

_LAZY: dict[str, Where] = {
    "check": ".diagnose.check",
    "Finding": ".diagnose.finding",
    "Guard": ".remedies.guard",
    "Remedy": ".diagnose.finding",
    "findings": (".diagnose.rules", "diagnose"),
    "Prescription": ".diagnose.prescribe",
    "prescribe": ".diagnose.prescribe",
    "Probe": ".probe",
    "write_report": ".report.html",
    "summary": (".report.text", "print_summary"),
    "Verdict": ".diagnose.verdict",
    "verdict": ".diagnose.verdict",
    "open_run": ".store",
}

__all__ = [
    "BackprobeError",
    "Finding",
    "Guard",
    "Prescription",
    "Probe",
    "Remedy",
    "Verdict",
    "__version__",
    "check",
    "findings",
    "open_run",
    "prescribe",
    "summary",
    "verdict",
    "write_report",
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)
