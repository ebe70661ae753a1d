"""Norms of parameters and gradients: of each tensor, and of all of them together.

The one place that knows which elements make up a tensor's norm (a sparse tensor's
coalesced values; this rank's shard of an FSDP2 ``DTensor``), and how to take many norms
at once: one fused ``_foreach_norm`` per (device, dtype) group, no host synchronisation.
The probe's parameter norms, the clipping remedies' global gradient norm and the
TensorBoard histograms all read tensors through it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .distributed import local_shard


def accumulator(dtype: torch.dtype) -> torch.dtype:
    """float32, or the tensor's own dtype when wider (float64): narrowing a float64
    tensor would overflow above float32's maximum, and vector_norm refuses to."""
    return torch.promote_types(dtype, torch.float32)


def dense_values(t: torch.Tensor) -> torch.Tensor:
    """The elements whose squares make up ``t``'s norm: a sparse tensor's coalesced values
    (duplicate indices sum first, as they do wherever the tensor is used), else ``t``."""
    return t.coalesce().values() if t.is_sparse else t


def local_values(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(elements, shards)``: the :func:`dense_values` of this rank's part of ``t`` (its
    local shard for an FSDP2 ``DTensor``), and into how many shards ``t`` is split over
    the ranks (1 for a plain tensor; see :func:`~backprobe.probe.distributed.local_shard`)."""
    local, shards = local_shard(t)
    return dense_values(local), shards


def foreach_norms(
    tensors: Sequence[torch.Tensor], dtype: torch.dtype, foreach: bool | None = None
) -> list[torch.Tensor]:
    """0-d L2 norms accumulated in ``dtype``, one per tensor: one fused kernel unless
    ``foreach`` is False (one ``vector_norm`` each), no host synchronisation."""
    if foreach is not False:
        try:
            return list(torch._foreach_norm(list(tensors), 2, dtype=dtype))
        except TypeError:  # older torch without the dtype argument
            pass
    return [torch.linalg.vector_norm(t, dtype=dtype) for t in tensors]


def grouped_norms(
    values: Sequence[torch.Tensor],
    dtype: Callable[[torch.dtype], torch.dtype] = accumulator,
    foreach: bool | None = None,
) -> list[tuple[list[int], torch.Tensor]]:
    """The L2 norms of dense tensors (e.g. :func:`dense_values`), one group per (device,
    dtype) in order of first appearance: ``(positions in values, norms [len(positions)]
    on the group's device)``, accumulated in ``dtype(the group's dtype)``."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for position, t in enumerate(values):
        groups.setdefault((t.device, t.dtype), []).append(position)
    return [
        (positions, torch.stack(foreach_norms([values[i] for i in positions], dtype(d), foreach)))
        for (_, d), positions in groups.items()
    ]


def global_norm(tensors: Sequence[torch.Tensor], foreach: bool | None = None) -> torch.Tensor:
    """The L2 norm of all ``tensors`` together, as if concatenated: a 0-d float32 tensor on
    the first tensor's device (0 on the CPU if there is none). Each tensor's norm is
    accumulated in float32 (float64 for float64 tensors); no host synchronisation."""
    groups = grouped_norms([dense_values(t) for t in tensors], foreach=foreach)
    if not groups:
        return torch.zeros(())
    device = groups[0][1].device
    # float32 on the common device; .to() onto another device is asynchronous
    norms = [n.float().to(device, non_blocking=True) for _, n in groups]
    return torch.linalg.vector_norm(torch.cat(norms))
