"""backprobe: see, explain and cure vanishing and exploding gradients in PyTorch.

    import backprobe as bp
    probe = bp.Probe(model)
    with probe:
        for x, y in loader:
            loss = loss_fn(model(x), y); loss.backward()
            probe.step(loss)
            opt.step(); opt.zero_grad()
    probe.summary()

Names are imported on first use, so that ``backprobe --help`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__
from .errors import BackprobeError

if TYPE_CHECKING:
    from .diagnose.check import check
    from .diagnose.finding import Finding, Remedy
    from .diagnose.verdict import Verdict, verdict
    from .probe import Probe
    from .store import open_run

_LAZY = {
    "check": ".diagnose.check",
    "Finding": ".diagnose.finding",
    "Remedy": ".diagnose.finding",
    "Probe": ".probe",
    "Verdict": ".diagnose.verdict",
    "verdict": ".diagnose.verdict",
    "open_run": ".store",
}

__all__ = [
    "BackprobeError",
    "Finding",
    "Probe",
    "Remedy",
    "Verdict",
    "__version__",
    "check",
    "open_run",
    "verdict",
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'backprobe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
