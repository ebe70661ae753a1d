"""TensorBoard: the probe's statistics as scalars, gradients and weights as histograms.

Live, as an extra sink of the probe::

    from torch.utils.tensorboard import SummaryWriter
    from backprobe.integrations.tensorboard import TensorBoardSink

    writer = SummaryWriter("tb")
    probe = bp.Probe(model, sinks=[TensorBoardSink(writer, histogram_every=100)])

or after the fact, from a stored run: ``write_run(bp.open_run(db, run_id), writer)``.

Scalars are tagged ``backprobe/<statistic>/<layer>`` (one chart per statistic and layer,
grouped by statistic), ``backprobe/loss``, ``backprobe/<name>`` for scalars recorded
with ``probe.record_scalar`` and ``backprobe/memory_horizon/<recurrent layer>``; values
that do not apply (NaN) are left out. Histograms (``backprobe/grad/<layer>``,
``backprobe/weight/<layer>``) of each probed layer's own parameters are built on the
device on their own schedule, and cost one extra transfer on the steps that have them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ProbeConfigError
from ..probe.norms import local_values
from ..probe.schedule import Schedule, make_schedule
from ..store.view import RunView, StepProfiles, StepSeries
from .scalars import StepScalars

#: Histogram summary columns computed on the device, then ``bins`` bucket counts.
_SUMMARY = 5  # min, max, count, sum, sum of squares (finite values only)


def device_histograms(tensors: list[torch.Tensor], bins: int) -> torch.Tensor:
    """Histograms of several tensors' finite values, computed on their device without a
    synchronisation: float64 [len(tensors), 5 + bins] of (min, max, count, sum, sum of
    squares) then the counts of ``bins`` equal buckets between min and max. Empty or
    all-non-finite tensors give count 0."""
    rows = []
    for t in tensors:
        v = t.detach().reshape(-1).to(torch.float64)
        finite = torch.isfinite(v)
        zero = torch.zeros((), dtype=v.dtype, device=v.device)
        low = torch.where(finite, v, math.inf).amin() if v.numel() else zero
        high = torch.where(finite, v, -math.inf).amax() if v.numel() else zero
        kept = torch.where(finite, v, 0.0)
        width = torch.clamp(high - low, min=torch.finfo(torch.float64).tiny) / bins
        # bucket of each value; the maximum goes in the last one, non-finite in an extra
        index = ((kept - low) / width).floor().clamp_(0, bins - 1).long()
        index = torch.where(finite, index, bins)
        counts = torch.zeros(bins + 1, dtype=torch.float64, device=v.device)
        counts.scatter_add_(0, index, torch.ones_like(v))
        summary = torch.stack([low, high, finite.sum().to(v.dtype), kept.sum(), kept.dot(kept)])
        rows.append(torch.cat([summary, counts[:bins]]))
    return torch.stack(rows)


class TensorBoardSink(StepScalars):
    """Writes a probe's recorded steps to a TensorBoard ``SummaryWriter``.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (anything with its
            ``add_scalar`` and ``add_histogram_raw``). It stays the caller's: the sink
            flushes it but does not close it.
        prefix: first part of every tag.
        histogram_every: histograms of the probed layers' own parameters and gradients
            every N-th *recorded* step counted by training step (steps 0, N, 2N, … that
            are recorded), or a callable ``step -> bool``; None (default) for none.
        bins: buckets per histogram.
    """

    def __init__(
        self,
        writer: Any,
        *,
        prefix: str = "backprobe",
        histogram_every: int | Schedule | None = None,
        bins: int = 30,
    ) -> None:
        if not (hasattr(writer, "add_scalar") and hasattr(writer, "add_histogram_raw")):
            raise ProbeConfigError(
                f"Expected a torch.utils.tensorboard.SummaryWriter, got {type(writer).__name__}."
                " Create one with SummaryWriter(log_dir) and pass it to TensorBoardSink."
            )
        if not (isinstance(bins, int) and bins >= 1):
            raise ProbeConfigError(f"Expected bins to be a positive int, got {bins!r}.")
        super().__init__(prefix)
        self.writer = writer
        self.bins = bins
        self.histogram_schedule = (
            None if histogram_every is None else make_schedule(histogram_every)
        )
        self._modules: dict[str, nn.Module] = {}

    # -- the StepSink interface -----------------------------------------------------------

    def watch(self, modules: Mapping[str, nn.Module]) -> None:
        self._modules = dict(modules)

    def write(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def append(self, step: int, series: StepSeries, profiles: StepProfiles | None = None) -> None:
        """Writes the step's scalars, and its histograms when scheduled (see
        :meth:`~backprobe.store.sink.StepSink.append`)."""
        super().append(step, series, profiles)
        if self.histogram_schedule is not None and self.histogram_schedule(step):
            self.write_histograms(step)

    def flush(self) -> None:
        self.writer.flush()

    # -- histograms -----------------------------------------------------------------------

    def write_histograms(self, step: int) -> None:
        """Histograms of each watched layer's own trainable parameters (``weight``) and
        their gradients (``grad``), now: one device pass and one transfer for all."""
        tags: list[str] = []
        tensors: list[torch.Tensor] = []
        for name, module in self._modules.items():
            params = [p for p in module.parameters(recurse=False) if p.requires_grad]
            weights = [local_values(p.detach())[0] for p in params]
            grads = [local_values(p.grad)[0] for p in params if p.grad is not None]
            for kind, group in (("weight", weights), ("grad", grads)):
                if group and sum(t.numel() for t in group):
                    device = group[0].device
                    tags.append(f"{self.prefix}/{kind}/{name}")
                    tensors.append(torch.cat([t.reshape(-1).to(device) for t in group]))
        if not tensors:
            return
        target = tensors[0].device
        table = torch.cat([device_histograms([t], self.bins).to(target) for t in tensors])
        host = table.cpu().numpy()  # the one transfer of a histogram step
        for tag, row in zip(tags, host, strict=True):
            self._add_histogram(tag, row, step)

    def _add_histogram(self, tag: str, row: np.ndarray, step: int) -> None:
        low, high, count, total, squares = row[:_SUMMARY]
        if count == 0:
            return
        counts = row[_SUMMARY:]
        edges = np.linspace(low, high if high > low else low + 1e-12, self.bins + 1)
        # TensorBoard keeps right edges only: an empty leading bucket carries the left one
        self.writer.add_histogram_raw(
            tag,
            min=float(low),
            max=float(high),
            num=int(count),
            sum=float(total),
            sum_squares=float(squares),
            bucket_limits=edges.tolist(),
            bucket_counts=[0.0, *counts.tolist()],
            global_step=step,
        )


def write_run(run: RunView, writer: Any, prefix: str = "backprobe") -> int:
    """Write every recorded step of a run (stored or live) to ``writer`` as scalars, e.g.
    a run read back with ``bp.open_run``. Returns the number of steps written."""
    return TensorBoardSink(writer, prefix=prefix).write_run(run)
