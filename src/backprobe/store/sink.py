"""What a Probe hands each recorded step to: the run itself, and any extra sinks.

``Probe(model, sinks=[...])`` sends every recorded step to each extra sink too (e.g.
:class:`~backprobe.integrations.tensorboard.TensorBoardSink`), on rank 0 only under
torch.distributed. A sink receives the step's series once they are on the host: it costs
the training step no device work on unrecorded steps and no transfer of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

from torch import nn

from ..errors import ProbeConfigError
from .view import LayerInfo, StepProfiles, StepSeries


@runtime_checkable
class StepSink(Protocol):
    """Receives a probe's recorded steps, in order."""

    def watch(self, modules: Mapping[str, nn.Module]) -> None:
        """The probed modules by layer name, once, when the probe attaches."""

    def set_layers(self, layers: list[LayerInfo]) -> None:
        """The probed layers in input → output order, once the first step has shown it."""

    def append(self, step: int, series: StepSeries, profiles: StepProfiles | None = None) -> None:
        """One recorded step as the run stores it: its ``series`` by stored name and the
        recurrent layers' time ``profiles`` (see :data:`~backprobe.store.view.StepSeries`
        and :data:`~backprobe.store.view.StepProfiles`). Called before the training loop's
        ``optimizer.step()``: parameters and gradients are those described."""

    def flush(self) -> None:
        """Write what is buffered."""

    def close(self, status: str, error: str | None = None) -> None:
        """The run ended (``status`` "finished" or "failed")."""


def check_sinks(sinks: Iterable[object]) -> list[StepSink]:
    """The sinks as a list, each checked to be a :class:`StepSink`."""
    checked: list[StepSink] = []
    for sink in sinks:
        if isinstance(sink, StepSink):
            checked.append(sink)
        else:
            hint = (
                " Wrap a SummaryWriter: sinks=[TensorBoardSink(writer)] "
                "(from backprobe.integrations.tensorboard)."
                if hasattr(sink, "add_scalar")
                else ""
            )
            raise ProbeConfigError(
                f"Expected each sink to have watch, set_layers, append, flush and close "
                f"(a StepSink), but got {type(sink).__name__}.{hint}"
            )
    return checked
