"""Statistics of one recorded step: cheap reductions on the device, the rest on the host.

During a recorded step every hook call launches a few reductions over the tensor it sees
and keeps the results (small 1-D tensors, one value per sample) on the device, written
into storage reused from step to step (:class:`StatSlots`) so that they allocate nothing. At
``Probe.step()`` they are concatenated and moved to the host in one transfer per device;
numpy then combines them in float64. No hook ever synchronises with the device.

Per-sample vectors rather than scalars are kept because they are as cheap to compute
(one pass each) and let the host count samples with non-finite values without another
pass over the tensor. A *sample* is an index along the tensor's first dimension.

Backward signals are measured as exactly as in float64: a vanishing gradient's entries
fall below 1e-19, where their float32 squares underflow to zero, and measuring such
gradients is the point. On accelerators they are reduced in float64 (a float64 norm is
also non-finite exactly when an entry is, so it doubles as the detector); on the CPU in
float32, redone in float64 when float32 may be inexact (:func:`grad_row_norms`).
Parameter and gradient norms are taken in float32 and recomputed in float64 where
float32 may be inexact (:func:`refine_norms`). Activations are reduced in float32
(float64 for float64 models).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..activations import Saturation
from ..errors import BackprobeError
from ..store.statistics import LAYER_STATISTICS, Combine, LayerStatistic
from .distributed import process_group
from .norms import accumulator, grouped_norms, local_values, stacked_norms
from .scratch import Scratch

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


class Field(IntEnum):
    """What one gathered vector holds: the device reductions. The stored statistics read
    them by name (:data:`~backprobe.store.statistics.LAYER_STATISTICS`)."""

    OUT_SUM = 0  # per-sample sums of a layer's primary output
    OUT_NORM = 1  # per-sample L2 norms of the primary output
    OUT_SATURATED = 2  # per-sample counts of saturated units
    DEAD = 3  # one value: units of the layer that were zero for every sample
    SIGNAL_NORM = 4  # per-sample norms of the backward signal dL/d(one output tensor)
    PARAM_GRAD_NORM = 5  # norm of one parameter's gradient (see refine_norms)
    PARAM_NORM = 6  # norm of one (trainable) parameter
    LOSS = 7  # the loss given to step()
    SCALE = 8  # the GradScaler's scale when the gradients were computed
    EXTRA = 9  # values read back as they are: user scalars, recurrent time profiles


#: The fields of a layer's primary output, in the order :meth:`StepBuffer.add_output`
#: writes them (the saturated counts of saturating activations only).
_OUTPUT_FIELDS = (Field.OUT_SUM, Field.OUT_NORM)
_SATURATING_FIELDS = (*_OUTPUT_FIELDS, Field.OUT_SATURATED)

#: A float32 norm is exact to 1e-6 (relative) when the tensor's root-mean-square entry
#: lies between these bounds: below, squares under 1.2e-38 underflow and each may weigh
#: more than 1e-6 of the mean square; above, squares overflow float32 near 1.8e19.
FLOAT32_RMS_RANGE = (1e-16, 1e18)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """View ``t`` as [samples, features]; a 0-d tensor is one sample of one feature."""
    dim = t.dim()
    if dim == 2:  # the common case, spared a reshape call (hooks run hundreds a step)
        return t
    return t.reshape(1, 1) if dim == 0 else t.reshape(t.shape[0], -1)


def _take(
    slots: StatSlots | None, n: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``n`` elements from ``slots``, or a fresh tensor without them."""
    if slots is None:
        return torch.empty(n, device=device, dtype=dtype)
    return slots.take(n, device, dtype)


def _reduce(
    op: Callable[..., torch.Tensor], rows: torch.Tensor, dtype: torch.dtype, out: torch.Tensor
) -> torch.Tensor:
    """``op(rows, dim=1)`` accumulated in ``dtype``, written into ``out`` [samples]."""
    # an explicit dtype equal to the input's takes a slower kernel: pass it only to widen
    if rows.dtype == dtype:
        return op(rows, dim=1, out=out)
    return op(rows, dim=1, dtype=dtype, out=out)


def _per_row(
    op: Callable[..., torch.Tensor], t: torch.Tensor, slots: StatSlots | None
) -> torch.Tensor:
    """``op`` over ``t`` as [samples, features], accumulated as :func:`accumulator` says."""
    rows = _rows(t)
    dtype = accumulator(rows.dtype)
    return _reduce(op, rows, dtype, _take(slots, rows.shape[0], rows.device, dtype))


def row_sums(t: torch.Tensor, slots: StatSlots | None = None) -> torch.Tensor:
    """[samples] sums. Non-finite exactly when the sample holds a non-finite value
    (barring overflow of values near the dtype's maximum), and it costs one pass."""
    return _per_row(torch.sum, t, slots)


def row_norms(t: torch.Tensor, slots: StatSlots | None = None) -> torch.Tensor:
    """[samples] L2 norms, accumulated in float32 (float64 for float64 tensors)."""
    return _per_row(torch.linalg.vector_norm, t, slots)


def grad_row_norms(t: torch.Tensor, slots: StatSlots | None = None) -> torch.Tensor:
    """[samples] L2 norms of a backward signal, as exact as float64 ones (see the module
    docstring).

    On the CPU a float32 norm comes first and is kept when every sample's root-mean-square
    entry lies in ``FLOAT32_RMS_RANGE``, where it is exact to 1e-6; otherwise (vanishing,
    exploding, zero or non-finite samples) the norms are taken again in float64. Looking
    at the values costs nothing there, since a CPU tensor is computed when the call
    returns, and it spares the float64 copy of the tensor in healthy steps. On an
    accelerator the check would stall the device until the hook's kernels finish, so the
    norms are accumulated in float64 at once.
    """
    rows = _rows(t)
    samples, device = rows.shape[0], rows.device
    if device.type == "cpu" and accumulator(rows.dtype) == torch.float32:
        norms = _reduce(
            torch.linalg.vector_norm,
            rows,
            torch.float32,
            _take(slots, samples, device, torch.float32),
        )
        if not samples:
            return norms
        smallest, largest = torch.aminmax(norms)  # NaN if any is
        scale = math.sqrt(rows.shape[1])  # norm = RMS * sqrt(features)
        low, high = FLOAT32_RMS_RANGE
        if low * scale <= smallest.item() and largest.item() <= high * scale:  # not NaN
            return norms
    out = _take(slots, samples, device, torch.float64)
    return _reduce(torch.linalg.vector_norm, rows, torch.float64, out)


def _float64(dtype: torch.dtype) -> torch.dtype:
    """Accumulate every norm in float64 (torch.distributed sums the ranks' squares)."""
    return torch.float64


def add_tensor_norms(
    buffer: StepBuffer, items: list[tuple[int, torch.Tensor]], kind: Field
) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
    """One entry of ``kind`` per ``(layer, tensor)``: its norm, accumulated in float32
    (float64 for float64 tensors), one stacked vector per device and dtype. A sparse
    tensor's norm is that of its coalesced values; an FSDP2 ``DTensor``'s, that of this
    rank's shard (:func:`~backprobe.probe.norms.local_values`; the ranks' shards are
    combined in :func:`~backprobe.probe.distributed.gather_step`, which also needs exact
    norms: float64 under torch.distributed).

    Returns the tensors in entry order, for :func:`refine_norms`, and each tensor's norm
    on the device (0-d) by ``id`` of the tensor, for the sentinel to reuse.
    """
    local = [local_values(t) for _, t in items]
    values = [v for v, _ in local]
    dtype = _float64 if process_group() is not None else accumulator
    ordered: list[torch.Tensor] = []
    by_tensor: dict[int, torch.Tensor] = {}
    for positions, norms in grouped_norms(values, dtype):
        buffer.add_elements(
            [items[i][0] for i in positions],
            kind,
            norms,
            [values[i].numel() for i in positions],
            shards=[local[i][1] for i in positions],
        )
        ordered.extend(values[i] for i in positions)
        by_tensor.update((id(items[i][1]), norms[k]) for k, i in enumerate(positions))
    return ordered, by_tensor


def refine_norms(host: HostStep, kind: Field, tensors: list[torch.Tensor]) -> None:
    """Recompute in float64 the norms of ``kind`` whose float32 value may be inexact (see
    ``FLOAT32_RMS_RANGE``; zero and non-finite included) and write them into ``host``.

    The tensors (parameters and their gradients) are still alive at ``step()``. This
    costs a second transfer only when such norms exist, that is in the vanishing and
    exploding cases this library is about; healthy runs keep one transfer per step.
    Under torch.distributed the norms were accumulated in float64 already: nothing to do.
    """
    if host.ranks is not None:
        return
    entries = np.flatnonzero(host.fields == kind)
    positions = host.starts[entries]
    rms = host.values[positions] / np.sqrt(np.maximum(host.numels[entries], 1.0))
    low, high = FLOAT32_RMS_RANGE
    with np.errstate(invalid="ignore"):
        suspect = ~((rms >= low) & (rms <= high))
    redo = [int(k) for k in np.flatnonzero(suspect) if tensors[k].dtype != torch.float64]
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for k in redo:
        by_device[tensors[k].device].append(k)
    for device_redo in by_device.values():
        exact = stacked_norms([tensors[k] for k in device_redo], torch.float64)
        host.values[positions[device_redo]] = exact.cpu().numpy()


def saturated_per_row(
    t: torch.Tensor,
    sat: Saturation,
    slots: StatSlots | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """[samples] counts of units with ``|y - center| > half_width`` (``>=`` if inclusive),
    written into ``out`` when given (its dtype: float32, or float64 for float64 ``t``).

    The distances are written into a copy of ``t`` (the slots' scratch when given), made
    a 0./1. mask in place and summed: three passes and no other temporary.
    """
    rows = _rows(t)
    dist = torch.empty_like(rows) if slots is None else slots.scratch(rows)
    if sat.center:
        torch.sub(rows, sat.center, out=dist).abs_()
    else:
        torch.abs(rows, out=dist)
    if sat.inclusive:
        dist.ge_(sat.half_width)
    else:
        dist.gt_(sat.half_width)
    dtype = accumulator(rows.dtype)
    if out is None:
        out = _take(slots, rows.shape[0], rows.device, dtype)
    return _reduce(torch.sum, dist, dtype, out)


def max_per_unit(t: torch.Tensor, slots: StatSlots | None = None) -> torch.Tensor:
    """[units] maximum over samples; a ReLU unit is dead when this is zero."""
    rows = _rows(t)
    out = None if slots is None else slots.take(rows.shape[1], rows.device, rows.dtype)
    return torch.amax(rows, dim=0, out=out)


class StatSlots:
    """Storage reused from one recorded step to the next for the statistics the hooks
    compute, one flat tensor per (device, dtype), handed out front to back.

    Why: the hooks' results live from the forward pass until ``Probe.step()``. Allocated
    one by one, such small blocks land between the model's activations and keep the
    allocator from reusing the activations' memory whole: on the CPU the process's peak
    memory grows by about a copy of the activations (measured in ``benchmarks/``).
    Written into storage taken before the step, they allocate nothing.

    A step that needs more than the storage holds gets fresh tensors for the excess, and
    :meth:`reset` grows the storage to that step's need for the next one. What
    :meth:`take` returns is valid until the next :meth:`reset`. The storage stays
    allocated between recorded steps; its size is one step's results (a few values per
    sample and layer, plus one per unit of ReLU-family layers), which a recorded step
    held at its peak anyway.
    """

    def __init__(self) -> None:
        self._storage: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._used: dict[tuple[torch.device, torch.dtype], int] = defaultdict(int)
        self._scratch = Scratch()

    def take(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """A 1-D tensor of ``n`` uninitialised elements."""
        key = (device, dtype)
        start = self._used[key]
        end = self._used[key] = start + n
        storage = self._storage.get(key)
        if storage is None or end > storage.shape[0]:
            return torch.empty(n, device=device, dtype=dtype)
        return storage[start:end]

    def scratch(self, like: torch.Tensor) -> torch.Tensor:
        """A tensor of ``like``'s shape, dtype and device for a temporary that a hook
        uses and drops before it returns (the saturation mask): reused memory on the CPU
        (:class:`~backprobe.probe.scratch.Scratch`)."""
        return self._scratch.get(like.shape, like.dtype, like.device)

    def reset(self) -> None:
        """Start a step: everything taken before may be overwritten from now on."""
        self._scratch.forget_views()
        for key, used in self._used.items():
            storage = self._storage.get(key)
            if storage is None or used > storage.numel():
                device, dtype = key
                self._storage[key] = torch.empty(used, device=device, dtype=dtype)
        self._used.clear()


@dataclass
class StepBuffer:
    """Device tensors gathered during one recorded step, in the order the hooks fired.

    Every tensor is 1-D and holds one *entry* (a per-sample vector of one layer) or, for
    values gathered together such as parameter norms, one entry per element. Per entry:
    the layer, the field, its length, and how many tensor elements it summarises
    (``numel``, for means and fractions), and ``shards``: 0 for values of this process's
    samples, k >= 1 for a parameter's norm when the parameter is split in k shards over
    the ranks (1: whole on every rank), so that torch.distributed counts it once. Units'
    maxima for dead-unit counting are kept per layer until the step ends: a unit is dead
    only if it is zero in every forward.
    """

    tensors: list[torch.Tensor] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    fields: list[int] = field(default_factory=list)
    numels: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    shards: list[int] = field(default_factory=list)
    unit_max: dict[int, list[torch.Tensor]] = field(default_factory=lambda: defaultdict(list))
    slots: StatSlots | None = None  # where the hooks' statistics are written (see StatSlots)

    def add(self, layer: int, kind: Field, values: torch.Tensor, numel: int = 0) -> None:
        """One entry: a 1-D tensor of one layer."""
        self.tensors.append(values)
        self.layers.append(layer)
        self.fields.append(kind)
        self.numels.append(numel)
        self.lengths.append(values.shape[0])
        self.shards.append(0)

    def add_elements(
        self,
        layers: list[int],
        kind: Field,
        values: torch.Tensor,
        numels: list[int],
        shards: list[int] | int = 0,
    ) -> None:
        """One entry per element of the 1-D tensor ``values``, of ``layers[i]``."""
        self.tensors.append(values)
        self.layers.extend(layers)
        self.fields.extend([kind] * len(layers))
        self.numels.extend(numels)
        self.lengths.extend([1] * len(layers))
        self.shards.extend(shards if isinstance(shards, list) else [shards] * len(layers))

    def add_extra(self, values: torch.Tensor) -> int:
        """An entry the host reads back as it is (:meth:`HostStep.entry`); returns its
        index. Riding in the step's one transfer costs no synchronisation of its own."""
        self.add(0, Field.EXTRA, values.detach().reshape(-1))
        return len(self.lengths) - 1

    def add_output(
        self, layer: int, out: torch.Tensor, sat: Saturation | None, can_die: bool
    ) -> None:
        """Forward statistics of a layer's primary output: per-sample sums, norms and (for
        a saturating activation) saturated counts, written into one block of the slots
        and gathered as one tensor (a hook's Python costs as much as its passes)."""
        rows = _rows(out.detach())
        samples, n, slots = rows.shape[0], rows.numel(), self.slots
        dtype = accumulator(rows.dtype)
        fields = _OUTPUT_FIELDS if sat is None else _SATURATING_FIELDS
        block = _take(slots, len(fields) * samples, rows.device, dtype)
        _reduce(torch.sum, rows, dtype, block[:samples])
        _reduce(torch.linalg.vector_norm, rows, dtype, block[samples : 2 * samples])
        if sat is not None:
            saturated_per_row(rows, sat, slots, block[2 * samples :])
        k = len(fields)
        self.tensors.append(block)
        self.layers.extend([layer] * k)
        self.fields.extend(fields)
        self.numels.extend([n] * k)
        self.lengths.extend([samples] * k)
        self.shards.extend([0] * k)
        if can_die:
            self.unit_max[layer].append(max_per_unit(rows, slots))

    def add_grad(self, layer: int, grad: torch.Tensor) -> None:
        """Backward signal: dL/d(one output tensor of the layer)."""
        rows = _rows(grad.detach())
        self.add(layer, Field.SIGNAL_NORM, grad_row_norms(rows, self.slots), rows.numel())

    def unit_peaks(self) -> dict[int, torch.Tensor | None]:
        """Per layer that can die: its units' maxima over the step's samples [units], or
        None when its forwards had different shapes (units are not comparable)."""
        peaks: dict[int, torch.Tensor | None] = {}
        for layer, maxima in self.unit_max.items():
            if len({m.shape for m in maxima}) != 1:
                peaks[layer] = None
            else:
                peaks[layer] = maxima[0] if len(maxima) == 1 else torch.stack(maxima).amax(dim=0)
        self.unit_max.clear()
        return peaks

    def add_dead(self, layers: list[int], peaks: list[torch.Tensor], shards: int = 0) -> None:
        """Dead-unit counts (units whose maximum is <= 0) of ``layers``, one entry each."""
        if layers:
            counts = torch.stack([peak.le(0).sum(dtype=torch.float32) for peak in peaks])
            self.add_elements(layers, Field.DEAD, counts, [p.numel() for p in peaks], shards)

    def _close_dead_units(self) -> None:
        peaks = {layer: p for layer, p in self.unit_peaks().items() if p is not None}
        self.add_dead(list(peaks), list(peaks.values()))

    def to_host(self, group: ProcessGroup | None = None, n_layers: int = 0) -> HostStep:
        """Concatenate per device and copy to the host: one transfer per device.

        With a torch.distributed ``group`` of several ranks (and the probe's ``n_layers``)
        the statistics are first combined across the ranks on the device, then copied in
        one transfer (:func:`~backprobe.probe.distributed.gather_step`).
        """
        if group is not None:
            from .distributed import gather_step

            return gather_step(self, group, n_layers)
        self._close_dead_units()
        devices = {t.device for t in self.tensors}
        if len(devices) <= 1:
            # One device-to-host copy: the only synchronisation of the step.
            values = (
                torch.cat(self.tensors).to("cpu", torch.float64).numpy()
                if self.tensors
                else np.zeros(0)
            )
        else:
            values = self._gather_devices(devices)
        return HostStep(
            values=values,
            lengths=np.asarray(self.lengths, np.int64),
            layers=np.asarray(self.layers, np.int64),
            fields=np.asarray(self.fields, np.int64),
            numels=np.asarray(self.numels, np.float64),
        )

    def _gather_devices(self, devices: set[torch.device]) -> np.ndarray:
        """One copy per device, then the pieces back in firing order."""
        pieces: list[np.ndarray] = [np.zeros(0)] * len(self.tensors)
        for device in devices:
            idx = [i for i, t in enumerate(self.tensors) if t.device == device]
            host = torch.cat([self.tensors[i] for i in idx]).to("cpu", torch.float64).numpy()
            sizes = [self.tensors[i].shape[0] for i in idx]
            for i, part in zip(idx, np.split(host, np.cumsum(sizes)[:-1]), strict=True):
                pieces[i] = part
        return np.concatenate(pieces)


def _read_fields(stat: LayerStatistic) -> tuple[Field, ...]:
    """The fields a stored statistic reads, by the names its table entry gives."""
    missing = [name for name in stat.reads if name not in Field.__members__]
    if missing:
        raise BackprobeError(
            f"Statistic {stat.name!r} reads {', '.join(missing)}, which the probe does not "
            f"gather (fields: {', '.join(Field.__members__)}). Add the field and its device "
            "reduction in StepBuffer, or read a gathered one."
        )
    return tuple(Field[name] for name in stat.reads)


#: Every stored per-layer statistic with the fields it reads.
STATISTIC_FIELDS: tuple[tuple[LayerStatistic, tuple[Field, ...]], ...] = tuple(
    (stat, _read_fields(stat)) for stat in LAYER_STATISTICS
)
#: Fields whose per-(field, layer) totals make the statistics and the loss: under
#: torch.distributed they are totalled over the ranks; any other entry (time profiles,
#: user scalars, the loss scale) is read back as it is, from this rank.
TOTALLED_FIELDS: frozenset[Field] = frozenset(
    {Field.LOSS, *(f for _, fields in STATISTIC_FIELDS for f in fields)}
)
#: Row of each gate statistic in a recurrent layer's [2] gate summary (mean, open).
_GATE_ROWS = {Combine.GATE_MEAN: 0, Combine.GATE_OPEN: 1}


@dataclass(frozen=True)
class StepTotals:
    """A recorded step's gathered values totalled per (field, layer), float64 [fields,
    layers] each: sums, sums of squares, elements summarised (``numel``), non-finite
    values, and whether the layer gathered the field at all (bool)."""

    total: np.ndarray
    squares: np.ndarray
    count: np.ndarray
    nonfinite: np.ndarray
    present: np.ndarray

    def combine(self, how: Combine, fields: tuple[Field, ...], unit: float = 1.0) -> np.ndarray:
        """One statistic per layer [layers]: ``fields`` combined as ``how`` says, values
        divided by ``unit`` (the loss scale for a scaled field; counts are not), NaN where
        the layer gathered none of ``fields[0]``. Empty layers divide 0 by 0: call it
        with numpy's invalid-value warnings off."""
        first = fields[0]
        if how is Combine.NONFINITE:
            return np.where(self.present[first], self.nonfinite[first], np.nan)
        if how is Combine.MEAN:
            value = self.total[first] / self.count[first]
        elif how is Combine.NORM:
            value = np.sqrt(self.squares[first])
        elif how is Combine.SPREAD:
            mean = self.total[first] / self.count[first]
            second = self.squares[fields[1]] / self.count[first]
            std = np.sqrt(np.maximum(second - mean * mean, 0.0))
            value = np.where(np.isfinite(second), std, second)
        else:
            raise BackprobeError(f"{how} is not combined from gathered totals.")
        if unit != 1.0:  # dividing by 1 changes nothing: spared
            value = value / unit
        return np.where(self.present[first], value, np.nan)


@dataclass(frozen=True)
class RankTotals(StepTotals):
    """:class:`StepTotals` over every rank of a torch.distributed job. The signal's
    squares are already those of the mean of the ranks' losses and the loss is that mean.
    ``entry_nonfinite`` are the per-entry non-finite counts summed over ranks (None when
    ranks' entries differ)."""

    entry_nonfinite: np.ndarray | None = None


@dataclass(frozen=True)
class HostStep:
    """A recorded step's gathered values on the host, in the order the hooks fired: entry
    ``i`` is the next ``lengths[i]`` values, described by ``layers[i]``, ``fields[i]`` and
    ``numels[i]``. Under torch.distributed, ``ranks`` holds the totals over every rank
    and the statistics are computed from them."""

    values: np.ndarray
    lengths: np.ndarray
    layers: np.ndarray
    fields: np.ndarray
    numels: np.ndarray
    ranks: RankTotals | None = None

    @property
    def starts(self) -> np.ndarray:
        """Position of each entry's first value in ``values``."""
        return np.cumsum(self.lengths) - self.lengths

    def entry(self, index: int) -> np.ndarray:
        """The values of one entry (e.g. one added with :meth:`StepBuffer.add_extra`)."""
        start = int(self.lengths[:index].sum())
        return self.values[start : start + int(self.lengths[index])]

    def reduce(
        self, n_layers: int, params_scaled: bool = False, gates: Mapping[int, int] | None = None
    ) -> StepStats:
        """Combine the entries into every stored per-layer statistic (float64, NaN where
        not measured), as :data:`~backprobe.store.statistics.LAYER_STATISTICS` says.

        The GradScaler's scale (if one was gathered) is divided out of the backward
        signal, and out of parameter gradients when ``params_scaled`` (the optimizer's
        gradients were not unscaled yet when the step was recorded). ``gates`` maps a
        recurrent layer to the entry of its [2] memory-gate summary (mean, open).
        """
        v = self.values
        n_entries = self.layers.size
        filled = self.lengths > 0
        firsts = self.starts[filled]  # increasing: each filled entry runs to the next

        def per_entry(data: np.ndarray) -> np.ndarray:
            """Each entry's total of ``data`` [values] (0 if empty), float64 [entries]:
            one ``reduceat`` over the contiguous entries (8x faster than a bincount over
            the values' entry indices, at a few hundred entries of 256 samples)."""
            totals = np.zeros(n_entries)
            if firsts.size:
                totals[filled] = np.add.reduceat(data, firsts, dtype=np.float64)
            return totals

        sums = per_entry(v)
        nonfinite = per_entry(~np.isfinite(v))
        ranks = self.ranks
        totals: StepTotals
        if ranks is None:
            key = self.fields * n_layers + self.layers

            def table(weights: np.ndarray | None = None) -> np.ndarray:
                """[fields, layers] totals of a per-entry quantity."""
                totals = np.bincount(key, weights=weights, minlength=len(Field) * n_layers)
                return totals.reshape(len(Field), n_layers)

            totals = StepTotals(
                total=table(sums),
                squares=table(per_entry(v * v)),
                count=table(self.numels),
                nonfinite=table(nonfinite),
                present=table() > 0,
            )
        else:  # torch.distributed: the same tables, over every rank
            totals = ranks
            if ranks.entry_nonfinite is not None:
                nonfinite = ranks.entry_nonfinite
        scale = self._scalar(Field.SCALE, sums, default=1.0)
        units = {Field.SIGNAL_NORM: scale, Field.PARAM_GRAD_NORM: scale if params_scaled else 1.0}
        gate_rows = np.full((len(_GATE_ROWS), n_layers), np.nan)
        for layer, entry in (gates or {}).items():
            gate_rows[:, layer] = self.entry(entry)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            per_layer = {
                stat.name: (
                    gate_rows[_GATE_ROWS[stat.combine]]
                    if stat.combine in _GATE_ROWS
                    # filled in by the probe's attention and optimizer watches
                    else np.full(n_layers, np.nan)
                    if stat.combine is Combine.MEASURED
                    else totals.combine(stat.combine, fields, units.get(fields[0], 1.0))
                )
                for stat, fields in STATISTIC_FIELDS
            }
        loss = (
            self._scalar(Field.LOSS, sums, default=np.nan)
            if ranks is None
            else float(ranks.total[Field.LOSS, 0] if ranks.present[Field.LOSS, 0] else np.nan)
        )
        return StepStats(per_layer, loss, self._first_nonfinite(nonfinite))

    def _scalar(self, kind: Field, sums: np.ndarray, default: float) -> float:
        hits = np.flatnonzero(self.fields == kind)
        return float(sums[hits[-1]]) if hits.size else default

    def _first_nonfinite(self, nonfinite: np.ndarray) -> tuple[int, int]:
        """(layer, phase) of the first hook call that saw a non-finite value, phase 0 for
        the forward pass and 1 for the backward pass; (-1, -1) when all were finite."""
        watched = (self.fields == Field.OUT_SUM) | (self.fields == Field.SIGNAL_NORM)
        hits = np.flatnonzero(watched & (nonfinite > 0))
        if not hits.size:
            return (-1, -1)
        first = hits[0]
        return int(self.layers[first]), int(self.fields[first] == Field.SIGNAL_NORM)


@dataclass(frozen=True)
class StepStats:
    """Statistics of one recorded step. ``per_layer``: every stored per-layer statistic by
    name, float64 [layers] indexed like the probe's hooks (registration order), NaN where
    it does not apply or the layer did not run; gradients are unscaled. ``loss``: the
    loss given to ``step()`` (NaN if none). ``first_nonfinite``: see
    :meth:`HostStep._first_nonfinite`."""

    per_layer: dict[str, np.ndarray]
    loss: float
    first_nonfinite: tuple[int, int]
