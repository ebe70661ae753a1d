"""Statistics of one recorded step: cheap reductions on the device, the rest on the host.

During a recorded step every hook call launches a few reductions over the tensor it sees
and keeps the results (small 1-D tensors, one value per sample) on the device. At
``Probe.step()`` they are concatenated and moved to the host in one transfer per device;
numpy then combines them in float64. No hook ever synchronises with the device.

Per-sample vectors rather than scalars are kept because they are as cheap to compute
(one pass each) and let the host count samples with non-finite values without another
pass over the tensor. A *sample* is an index along the tensor's first dimension.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import torch

from .selection import Saturation


class Field(IntEnum):
    """What one gathered vector holds."""

    OUT_SUM = 0  # per-sample sums of a layer's primary output
    OUT_NORM = 1  # per-sample L2 norms of the primary output
    OUT_SATURATED = 2  # per-sample counts of saturated units
    DEAD = 3  # one value: units of the layer that were zero for every sample
    GRAD_SUM = 4  # per-sample sums of dL/d(output); only to spot non-finite values
    GRAD_NORM = 5  # per-sample norms of dL/d(output), summed over the output tensors
    PARAM_GRAD_NORM = 6  # norm of one parameter's gradient
    PARAM_NORM = 7  # norm of one (trainable) parameter
    LOSS = 8  # the loss given to step()
    SCALE = 9  # the GradScaler's scale when the gradients were computed


def _rows(t: torch.Tensor) -> torch.Tensor:
    """View ``t`` as [samples, features]; a 0-d tensor is one sample of one feature."""
    return t.reshape(1, 1) if t.dim() == 0 else t.reshape(t.shape[0], -1)


def _accumulator(t: torch.Tensor) -> torch.dtype:
    """float32, or the tensor's own dtype when wider (float64): narrowing a float64
    tensor would overflow above float32's maximum, and vector_norm refuses to."""
    return torch.promote_types(t.dtype, torch.float32)


def row_sums(t: torch.Tensor) -> torch.Tensor:
    """[samples] sums. Non-finite exactly when the sample holds a non-finite value
    (barring overflow of values near the dtype's maximum), and it costs one pass.
    """
    rows, acc = _rows(t), _accumulator(t)
    # an explicit dtype equal to the input's takes a slower kernel: pass it only to widen
    return rows.sum(dim=1) if rows.dtype == acc else rows.sum(dim=1, dtype=acc)


def row_norms(t: torch.Tensor) -> torch.Tensor:
    """[samples] L2 norms, accumulated in float32 (float64 for float64 tensors)."""
    rows, acc = _rows(t), _accumulator(t)
    if rows.dtype == acc:
        return torch.linalg.vector_norm(rows, dim=1)
    return torch.linalg.vector_norm(rows, dim=1, dtype=acc)


def saturated_per_row(t: torch.Tensor, sat: Saturation) -> torch.Tensor:
    """[samples] counts of units with ``|y - center| > half_width`` (``>=`` if inclusive)."""
    dist = _rows(t).sub(sat.center).abs_() if sat.center else _rows(t).abs()
    # in place on our own copy: the mask is 0./1. in the output's dtype
    mask = dist.ge_(sat.half_width) if sat.inclusive else dist.gt_(sat.half_width)
    return mask.sum(dim=1) if mask.dtype == torch.float32 else mask.sum(1, dtype=torch.float32)


def max_per_unit(t: torch.Tensor) -> torch.Tensor:
    """[units] maximum over samples; a ReLU unit is dead when this is zero."""
    return _rows(t).amax(dim=0)


@dataclass
class StepBuffer:
    """Device tensors gathered during one recorded step, in the order the hooks fired.

    ``numels[i]`` is how many tensor elements entry ``i`` summarises (for means and
    fractions). Units' maxima for dead-unit counting are kept per layer until the step
    ends, because a unit is dead only if it is zero in every forward of the step.
    """

    tensors: list[torch.Tensor] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    fields: list[int] = field(default_factory=list)
    numels: list[int] = field(default_factory=list)
    unit_max: dict[int, list[torch.Tensor]] = field(default_factory=lambda: defaultdict(list))

    def add(self, layer: int, kind: Field, values: torch.Tensor, numel: int = 0) -> None:
        self.tensors.append(values)
        self.layers.append(layer)
        self.fields.append(int(kind))
        self.numels.append(numel)

    def add_output(
        self, layer: int, out: torch.Tensor, sat: Saturation | None, can_die: bool
    ) -> None:
        """Forward statistics of a layer's primary output."""
        out = out.detach()
        n = out.numel()
        self.add(layer, Field.OUT_SUM, row_sums(out), n)
        self.add(layer, Field.OUT_NORM, row_norms(out), n)
        if sat is not None:
            self.add(layer, Field.OUT_SATURATED, saturated_per_row(out, sat), n)
        if can_die:
            self.unit_max[layer].append(max_per_unit(out))

    def add_grad(self, layer: int, grad: torch.Tensor) -> None:
        """Backward signal: dL/d(one output tensor of the layer)."""
        self.add(layer, Field.GRAD_SUM, row_sums(grad), grad.numel())
        self.add(layer, Field.GRAD_NORM, row_norms(grad), grad.numel())

    def _close_dead_units(self) -> None:
        for layer, maxima in self.unit_max.items():
            if len({m.shape for m in maxima}) != 1:
                continue  # forwards of different shapes: units are not comparable
            peak = maxima[0] if len(maxima) == 1 else torch.stack(maxima).amax(dim=0)
            self.add(
                layer, Field.DEAD, peak.le(0).sum(dtype=torch.float32).reshape(1), peak.numel()
            )
        self.unit_max.clear()

    def to_host(self) -> HostStep:
        """Concatenate per device and copy to the host: one transfer per device."""
        self._close_dead_units()
        by_device: dict[torch.device, list[int]] = defaultdict(list)
        for i, t in enumerate(self.tensors):
            by_device[t.device].append(i)
        lengths = np.fromiter((t.numel() for t in self.tensors), np.int64, len(self.tensors))
        segments: list[np.ndarray] = [np.zeros(0)] * len(self.tensors)
        for idx in by_device.values():
            # One device-to-host copy per device: the only synchronisation of the step.
            flat = torch.cat([self.tensors[i].reshape(-1) for i in idx])
            host = flat.to("cpu", torch.float64).numpy()
            parts = np.split(host, np.cumsum(lengths[idx])[:-1])
            for i, part in zip(idx, parts, strict=True):
                segments[i] = part
        return HostStep(
            values=np.concatenate(segments) if segments else np.zeros(0),
            segment=np.repeat(np.arange(len(lengths)), lengths),
            layers=np.asarray(self.layers, np.int64),
            fields=np.asarray(self.fields, np.int64),
            numels=np.asarray(self.numels, np.float64),
        )


@dataclass(frozen=True)
class HostStep:
    """A recorded step's gathered values on the host, in the order the hooks fired:
    ``values[segment == i]`` is entry ``i``, described by ``layers[i]``, ``fields[i]``
    and ``numels[i]``."""

    values: np.ndarray
    segment: np.ndarray
    layers: np.ndarray
    fields: np.ndarray
    numels: np.ndarray

    def _per_entry(self, data: np.ndarray) -> np.ndarray:
        return np.bincount(self.segment, weights=data, minlength=len(self.layers))

    def reduce(self, n_layers: int, params_scaled: bool = False) -> StepStats:
        """Combine the entries into per-layer statistics (float64, NaN where not measured).

        The GradScaler's scale (if one was gathered) is divided out of the backward
        signal, and out of parameter gradients when ``params_scaled`` (the optimizer's
        gradients were not unscaled yet when the step was recorded).
        """
        v = self.values
        sums = self._per_entry(v)
        squares = self._per_entry(v * v)
        nonfinite = self._per_entry((~np.isfinite(v)).astype(np.float64))

        def per_layer(kind: Field, data: np.ndarray) -> np.ndarray:
            sel = self.fields == kind
            return np.bincount(self.layers[sel], weights=data[sel], minlength=n_layers)

        def present(kind: Field) -> np.ndarray:
            return np.bincount(self.layers[self.fields == kind], minlength=n_layers) > 0

        def masked(kind: Field, data: np.ndarray) -> np.ndarray:
            return np.where(present(kind), data, np.nan)

        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            n_out = per_layer(Field.OUT_SUM, self.numels)
            mean = per_layer(Field.OUT_SUM, sums) / n_out
            second = per_layer(Field.OUT_NORM, squares) / n_out
            std = np.sqrt(np.maximum(second - mean * mean, 0.0))
            std = np.where(np.isfinite(second), std, second)
            saturated = per_layer(Field.OUT_SATURATED, sums) / per_layer(
                Field.OUT_SATURATED, self.numels
            )
            dead = per_layer(Field.DEAD, sums) / per_layer(Field.DEAD, self.numels)
            scale = self._scalar(Field.SCALE, sums, default=1.0)
            signal = np.sqrt(per_layer(Field.GRAD_NORM, squares)) / scale
            grad_norm = np.sqrt(per_layer(Field.PARAM_GRAD_NORM, squares))
            if params_scaled:
                grad_norm = grad_norm / scale
            weight_norm = np.sqrt(per_layer(Field.PARAM_NORM, squares))
        return StepStats(
            grad_norm=masked(Field.PARAM_GRAD_NORM, grad_norm),
            weight_norm=masked(Field.PARAM_NORM, weight_norm),
            signal_norm=masked(Field.GRAD_NORM, signal),
            act_mean=masked(Field.OUT_SUM, mean),
            act_std=masked(Field.OUT_SUM, std),
            saturated=masked(Field.OUT_SATURATED, saturated),
            dead=masked(Field.DEAD, dead),
            nonfinite_out=masked(Field.OUT_SUM, per_layer(Field.OUT_SUM, nonfinite)),
            nonfinite_grad=masked(Field.GRAD_SUM, per_layer(Field.GRAD_SUM, nonfinite)),
            loss=self._scalar(Field.LOSS, sums, default=np.nan),
            first_nonfinite=self._first_nonfinite(nonfinite),
        )

    def _scalar(self, kind: Field, sums: np.ndarray, default: float) -> float:
        hits = np.flatnonzero(self.fields == kind)
        return float(sums[hits[-1]]) if hits.size else default

    def _first_nonfinite(self, nonfinite: np.ndarray) -> tuple[int, int]:
        """(layer, phase) of the first hook call that saw a non-finite value, phase 0 for
        the forward pass and 1 for the backward pass; (-1, -1) when all were finite."""
        watched = (self.fields == Field.OUT_SUM) | (self.fields == Field.GRAD_SUM)
        hits = np.flatnonzero(watched & (nonfinite > 0))
        if not hits.size:
            return (-1, -1)
        first = hits[0]
        return int(self.layers[first]), int(self.fields[first] == Field.GRAD_SUM)


@dataclass(frozen=True)
class StepStats:
    """Per-layer statistics of one recorded step, float64 arrays [layers] indexed like the
    probe's hooks (registration order), NaN where a statistic does not apply or the layer
    did not run. Gradients are unscaled."""

    grad_norm: np.ndarray
    weight_norm: np.ndarray
    signal_norm: np.ndarray
    act_mean: np.ndarray
    act_std: np.ndarray
    saturated: np.ndarray
    dead: np.ndarray
    nonfinite_out: np.ndarray
    nonfinite_grad: np.ndarray
    loss: float
    first_nonfinite: tuple[int, int]
