"""torch.distributed (DDP, FSDP2): global statistics, and one rank writes the run.

Under ``torchrun`` every rank runs the training loop with its own probe, and every rank
records the same steps (the schedule counts steps, so keep it rank-independent). At a
recorded step the probes combine what they measured *on the device*, before the step's
one transfer to the host, so that each rank ends up with the statistics of the global
batch:

- activations and backward signals: per (statistic, layer), the sums, sums of squares,
  element counts and non-finite counts over the rank's samples are all-reduced (summed);
- dead units: the per-unit maxima over samples are all-reduced with MAX, so a unit is
  dead only if it was zero on every rank;
- parameter gradients and weights: DDP all-reduces gradients itself, so every rank holds
  the global ones; FSDP2 keeps one shard of each parameter per rank (a ``DTensor``) and
  the shards' sums of squares are summed. Either way a parameter counts once;
- the loss: the mean over ranks. DDP and FSDP average gradients over ranks, so the
  objective being optimised is the mean of the ranks' losses, and the backward signal
  dL/d(output) of that objective is each rank's signal divided by the world size.

Only rank 0 writes the run database (:func:`is_primary`); the other ranks keep their run
in memory. All collectives use the default process group.
"""

from __future__ import annotations

import math
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

    from .stats import HostStep, StepBuffer

_cpu_groups: dict[int, ProcessGroup] = {}


def process_group() -> ProcessGroup | None:
    """The default process group when ``torch.distributed`` runs with more than one rank,
    else None (a single process needs no reduction)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return None
    return dist.group.WORLD if dist.get_world_size() > 1 else None


def is_primary() -> bool:
    """Whether this process writes the run: rank 0, or the only process."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside ``DistributedDataParallel`` / ``DataParallel`` and inside
    ``torch.compile(model)``, whose layer names then read as in a single eager process
    (``0.weight``, not ``module.0.weight`` or ``_orig_mod.0.weight``)."""
    from torch._dynamo.eval_frame import OptimizedModule

    while isinstance(
        model, (nn.parallel.DistributedDataParallel, nn.DataParallel, OptimizedModule)
    ):
        model = model.module if not isinstance(model, OptimizedModule) else model._orig_mod
    return model


def local_shard(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(local tensor, shards)``: a ``DTensor`` (FSDP2) gives its local shard and into how
    many pieces the tensor is split across the ranks; a plain tensor gives itself and 1
    (replicated, as DDP keeps parameters and gradients)."""
    to_local = getattr(t, "to_local", None)
    if to_local is None:
        return t, 1
    dtensor: Any = t  # torch.Tensor's stubs lack a DTensor's device_mesh and placements
    mesh, placements = dtensor.device_mesh, dtensor.placements
    shards = math.prod(mesh.size(dim) for dim, p in enumerate(placements) if p.is_shard())
    return to_local(), shards


def _cpu_group(group: ProcessGroup) -> ProcessGroup:
    """A group able to reduce small CPU tensors: the default group if it runs gloo, else a
    gloo group created once (collectively: every rank gets here at the same step)."""
    import torch.distributed as dist

    if "gloo" in str(dist.get_backend(group)):
        return group
    key = id(group)
    if key not in _cpu_groups:
        _cpu_groups[key] = dist.new_group(backend="gloo")
    return _cpu_groups[key]


def _agreement(group: ProcessGroup, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise (max, min) over ranks of a small int64 vector, on the host: layouts that
    must agree before tensors of those sizes can be reduced on the device. A CPU
    collective, so it waits for the other ranks but not for this rank's device."""
    import torch.distributed as dist

    both = torch.from_numpy(np.concatenate([local, -local]).astype(np.int64))
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=_cpu_group(group))
    n = local.size
    return both[:n].numpy(), -both[n:].numpy()


def gather_step(buffer: StepBuffer, group: ProcessGroup, n_layers: int) -> HostStep:
    """:meth:`StepBuffer.to_host` under torch.distributed: reduce across ranks on the
    device, then one transfer to the host. Returns the rank's own entries (for values read
    back as they are) with the global totals attached (``HostStep.ranks``)."""
    import torch.distributed as dist

    from .stats import TOTALLED_FIELDS, Field, HostStep, RankTotals

    world = dist.get_world_size(group)
    # Layouts first, on the host: units per layer for the dead-unit maxima (0 absent, -1
    # shapes differ within the step), and a signature of the entries in firing order.
    peaks = buffer.unit_peaks()
    units = np.zeros(n_layers, np.int64)
    for layer, peak in peaks.items():
        units[layer] = -1 if peak is None else peak.numel()
    keys = np.asarray(buffer.fields, np.int64) * n_layers + np.asarray(buffer.layers, np.int64)
    high, low = _agreement(group, np.append(units, [zlib.crc32(keys.tobytes()), keys.size]))
    agreed = [layer for layer in range(n_layers) if high[layer] == low[layer] > 0]
    same_entries = bool(high[-2] == low[-2] and high[-1] == low[-1])
    device = buffer.tensors[0].device if buffer.tensors else torch.device("cpu")

    # Dead units: a unit is dead if its maximum over every rank's samples is <= 0.
    if agreed:
        comparable = {layer: peak for layer, peak in peaks.items() if peak is not None}
        maxima = [comparable[layer].to(device, torch.float64) for layer in agreed]
        joint = torch.cat(maxima)
        dist.all_reduce(joint, op=dist.ReduceOp.MAX, group=group)
        buffer.add_dead(agreed, list(torch.split(joint, [m.numel() for m in maxima])), shards=1)

    # Per-(field, layer) totals of every entry, weighted: a rank's own samples count once
    # (shards=0); a parameter split in k shards is held by world/k ranks: weight k/world.
    lengths = np.asarray(buffer.lengths, np.int64)
    fields = np.asarray(buffer.fields, np.int64)
    layers = np.asarray(buffer.layers, np.int64)
    n_entries, n_keys = lengths.size, len(Field) * n_layers
    shards = np.asarray(buffer.shards, np.float64)
    weights = np.where(shards > 0, shards / world, 1.0)
    weights[~np.isin(fields, list(TOTALLED_FIELDS))] = 0.0  # others: read back as they are
    numels = np.asarray(buffer.numels, np.float64)
    index = np.concatenate([np.repeat(np.arange(n_entries), lengths), fields * n_layers + layers])
    # Staged copies from pageable host memory: no synchronisation with the device.
    index_t = torch.from_numpy(index).to(device, non_blocking=True)
    weights_t = torch.from_numpy(np.stack([weights, numels * weights])).to(
        device, non_blocking=True
    )
    values = torch.cat(
        [torch.zeros(0, dtype=torch.float64, device=device)]
        + [t.to(device, torch.float64) for t in buffer.tensors]
    )
    segment, key = index_t[: values.numel()], index_t[values.numel() :]
    per_entry = torch.zeros(3, n_entries, dtype=torch.float64, device=device)
    bad = (~torch.isfinite(values)).to(torch.float64)
    per_entry.index_add_(1, segment, torch.stack([values, values * values, bad]))
    w = weights_t[0]
    rows = torch.stack([per_entry[0] * w, per_entry[1] * w, weights_t[1], per_entry[2] * w, w])
    table = torch.zeros(5, n_keys, dtype=torch.float64, device=device)
    table.index_add_(1, key, rows)
    # With the same entries on every rank, their non-finite counts too: the first entry
    # that saw one on any rank.
    reduced = torch.cat([table.reshape(-1), per_entry[2]]) if same_entries else table.reshape(-1)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM, group=group)

    # The step's one transfer to the host.
    host = torch.cat([values, reduced]).to("cpu").numpy()
    n_values = values.numel()
    totals = host[n_values : n_values + table.numel()].reshape(5, len(Field), n_layers).copy()
    totals[1, Field.SIGNAL_NORM] /= world * world  # signal of the mean of the ranks' losses
    totals[0, Field.LOSS] /= world  # the mean of the ranks' losses
    return HostStep(
        values=host[:n_values],
        lengths=lengths,
        layers=layers,
        fields=fields,
        numels=numels,
        ranks=RankTotals(
            total=totals[0],
            squares=totals[1],
            count=totals[2],
            nonfinite=totals[3],
            present=totals[4] > 0,
            entry_nonfinite=host[n_values + table.numel() :] if same_entries else None,
        ),
    )
