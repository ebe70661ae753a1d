"""backprobe: see, explain and cure vanishing and exploding gradients in PyTorch.

import backprobe as bp
probe = bp.Probe(model)
with probe:
    for x, y in loader:
        loss = loss_fn(model(x), y); loss.backward()
        probe.step(loss)
        opt.step(); opt.zero_grad()
probe.summary()
"""

from ._version import __version__
from .diagnose.verdict import Verdict, verdict
from .errors import BackprobeError
from .probe import Probe
from .store import open_run

__all__ = ["BackprobeError", "Probe", "Verdict", "__version__", "open_run", "verdict"]
