"""A run's recorded steps as tagged scalars: what every tracker sink writes.

Tags are ``<prefix>/<statistic>/<layer>`` for each per-layer statistic (the stored ones
and the derived ``grad_to_weight`` and ``gain``), ``<prefix>/loss``,
``<prefix>/<name>`` for scalars recorded with ``probe.record_scalar`` and
``<prefix>/memory_horizon/<recurrent layer>``. Values that do not apply (NaN) are left
out; infinities are kept (a blow-up is a measurement).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping

from torch import nn

from ..store.statistics import LAYER_SERIES
from ..store.view import LayerInfo, MemoryRun, RunView, StepProfiles, StepSeries

#: Per-layer statistics written as scalars: the stored ones and the derived ratios.
SCALAR_STATS: tuple[str, ...] = (*LAYER_SERIES, "grad_to_weight", "gain")


def run_scalars(run: RunView, prefix: str) -> Iterator[tuple[int, dict[str, float]]]:
    """Each recorded step of ``run`` as ``(step, {tag: value})``, in step order."""
    layers, steps = run.layers, run.steps
    per_layer = {stat: run.history(stat) for stat in SCALAR_STATS}
    per_step = {name: run.history(name) for name in ("loss", *run.scalar_names)}
    recurrent = {name: run.memory_horizon(name) for name in run.recurrent_layers}
    for row, step in enumerate(steps.tolist()):
        values: dict[str, float] = {}
        for stat, history in per_layer.items():
            for layer, value in zip(layers, history[row].tolist(), strict=True):
                if not math.isnan(value):
                    values[f"{prefix}/{stat}/{layer}"] = value
        for name, history in per_step.items():
            if not math.isnan(history[row]):
                values[f"{prefix}/{name}"] = float(history[row])
        for name, horizon in recurrent.items():
            if math.isfinite(horizon[row]):
                values[f"{prefix}/memory_horizon/{name}"] = float(horizon[row])
        yield int(step), values


class StepScalars(ABC):
    """The part of a :class:`~backprobe.store.sink.StepSink` that every tracker sink
    shares: it keeps the probed layers and turns each appended step into tagged scalars,
    read back through the run API so that derived statistics (gain, memory horizon, …)
    are the ones every reader computes. A sink derives from it and implements
    :meth:`write`, which puts one step's scalars where its tracker wants them."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._layers: list[LayerInfo] = []

    def set_layers(self, layers: list[LayerInfo]) -> None:
        self._layers = list(layers)

    def scalars(
        self, step: int, series: StepSeries, profiles: StepProfiles | None
    ) -> dict[str, float]:
        """The step's scalars by tag."""
        row = MemoryRun()
        row.set_layers(self._layers)
        row.append(step, series, profiles)
        return next(run_scalars(row, self.prefix))[1]

    @abstractmethod
    def write(self, step: int, values: dict[str, float]) -> None:
        """Hand one step's scalars (by tag) to the tracker."""

    # -- the StepSink interface ----------------------------------------------------------

    def watch(self, modules: Mapping[str, nn.Module]) -> None:
        """Tracker sinks write statistics only: the modules are not kept."""
        del modules

    def append(self, step: int, series: StepSeries, profiles: StepProfiles | None = None) -> None:
        """Writes the step's scalars (see :meth:`~backprobe.store.sink.StepSink.append`)."""
        self.write(step, self.scalars(step, series, profiles))

    def write_run(self, run: RunView) -> int:
        """Write every recorded step of ``run`` (stored or live), e.g. one read back with
        ``bp.open_run``, crashed or not. Returns the number of steps written."""
        written = 0
        for step, values in run_scalars(run, self.prefix):
            self.write(step, values)
            written += 1
        self.flush()
        return written

    @abstractmethod
    def flush(self) -> None:
        """Write what the tracker buffers."""

    def close(self, status: str, error: str | None = None) -> None:
        """The probe's run ended; the tracker's run stays its owner's: flushed only."""
        self.flush()
