"""Recorded steps of a compiled model run eagerly; its compiled graph never holds a hook.

``torch.compile`` traces a module's forward hooks into its graph. The probe's hooks return
at once while Dynamo traces them (:func:`tracing`), so a compiled graph carries none of
their work: no graph break, no guard on the probe's state, and no recompilation when
steps switch between recorded and unrecorded. A recorded step instead runs the whole
model eagerly, under ``torch.compiler.set_stance("force_eager")`` (:class:`EagerSteps`),
where the hooks see every layer's output and backward signal of the full batch, as in
eager training. So recorded statistics of a compiled model equal eager ones, whether the
probe was attached before or after ``torch.compile(model)`` / ``model.compile()``, and a
graph compiled before the probe was attached cannot hide the layers from it.

The price is that of eager execution on recorded steps only; the overhead budget
(:mod:`~backprobe.probe.budget`) counts it like any other cost of recording.
"""

from __future__ import annotations

from typing import Any

import torch

#: How the stored per-layer statistics were measured, for the run's config.
MEASURED_BY = (
    "full batch, by forward and backward hooks; a compiled model runs eagerly at recorded steps"
)


def tracing() -> bool:
    """Whether Dynamo is tracing the caller into a compiled graph (then a probe hook must
    do nothing: whatever it did would run at every step, recorded or not)."""
    return torch.compiler.is_compiling()


class _EagerStance:
    """The one ``torch.compiler.set_stance("force_eager")`` of the process, held while any
    probe is in a recorded step. The stance is global: probes share it, and the last one
    to leave restores the stance found when it was taken, unless the user has set another
    one meanwhile (theirs stays)."""

    def __init__(self) -> None:
        self.holders: set[int] = set()
        self._stance: Any = None  # torch._dynamo's set_stance object while held

    def hold(self, holder: int, eager: bool) -> None:
        if eager:
            if not self.holders:
                self._stance = torch.compiler.set_stance("force_eager")
            self.holders.add(holder)
        elif holder in self.holders:
            self.holders.discard(holder)
            if not self.holders:
                if _current_stance() is self._stance.stance:
                    self._stance.__exit__(None, None, None)
                self._stance = None


def _current_stance() -> object:
    """Dynamo's stance object now in force (torch has no public getter)."""
    from torch._dynamo import eval_frame

    return eval_frame._stance


_STANCE = _EagerStance()


class EagerSteps:
    """One probe's claim on the eager stance: from the start of a recorded step until
    ``Probe.step()`` ends it (or the probe detaches)."""

    def run_eagerly(self, eager: bool) -> None:
        """Hold (``eager``) or release the eager stance; holding twice changes nothing."""
        _STANCE.hold(id(self), eager)

    def __del__(self) -> None:  # a probe dropped mid-step must not leave the stance held
        _STANCE.hold(id(self), False)
