"""The sentinel: a few numbers of every training step, whatever the schedule.

A spike lives one step. The schedule records full statistics at some steps only, so the
probe also keeps, at *every* ``step()`` (recorded or not), what a spike needs to be
placed (:mod:`~backprobe.store.sentinel` gives the stored row):

- the loss given to ``step()``;
- the gradient norm of each probed layer's own trainable parameters, read from ``.grad``
  at ``step()`` (one vector of norms per device and dtype:
  :func:`~backprobe.probe.norms.grouped_norms`), and the
  global norm over all of them (each parameter once, tied ones too);
- the per-sample norm of the gradient at the model's output: a forward hook on the model
  registers one tensor hook on its output (the first floating-point tensor of at least
  one dimension that needs a gradient: the logits of a Hugging Face output, not its 0-d
  loss), whose per-sample norms (a *sample* is an index along the output's first
  dimension) of every forward of the step whose output got a gradient are concatenated
  in the order of the forwards (micro-batches of an accumulated step follow each other).

Everything stays on the device until ``step()``, where it is concatenated into one
vector and read with the step's one host transfer: riding in the recorded step's
transfer (:meth:`~backprobe.probe.stats.StepBuffer.add_extra`) or, on other steps, as
its own, which does not synchronise (:class:`Pending`): on a CUDA device a non-blocking
copy into pinned memory, read at the next ``step()`` (waiting, if at all, for that
step's work only, while the next step's is queued behind it), or earlier when the row is
asked for (a :class:`~backprobe.Guard` asks at once: it must judge the step before the
optimizer takes it). The host keeps the per-layer and global norms and, of the samples,
their number, median, the total norm and the :data:`~backprobe.store.sentinel.TOP_SAMPLES`
largest with their indices. Under a ``GradScaler`` the norms are unscaled. A compiled
model's output hook runs only where it lies outside the compiled graph (the probe given
the ``torch.compile`` wrapper); elsewhere the output norms of compiled steps are missing
and the rest is kept. Under torch.distributed the samples are this rank's.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.parameter import is_lazy

from ..store.sentinel import TOP_SAMPLES, pack_row
from .compiled import tracing
from .norms import by_device_and_dtype, grouped_norms, local_values
from .outputs import floating_tensors
from .stats import row_norms


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


def output_tensor(output: object) -> torch.Tensor | None:
    """The tensor of a model's output whose gradient the sentinel measures: the first
    floating-point tensor of at least one dimension that needs a gradient, else the first
    one that needs a gradient (a model returning its loss), else None."""
    tensors = [t for t in floating_tensors(output) if t.requires_grad]
    shaped = [t for t in tensors if t.dim() >= 1]
    return shaped[0] if shaped else (tensors[0] if tensors else None)


class _OutputHook:
    """The model's forward hook: hands its output to the sentinel. Holds the sentinel
    weakly, and a deep copy or pickle of the model gets an inert hook (a copy must not
    feed the original's sentinel)."""

    __slots__ = ("_sentinel",)

    def __init__(self, sentinel: Sentinel | None) -> None:
        self._sentinel = None if sentinel is None else weakref.ref(sentinel)

    def __call__(self, module: nn.Module, args: tuple, output: object) -> None:
        sentinel = None if self._sentinel is None else self._sentinel()
        if sentinel is not None:
            sentinel.on_output(output)

    def __deepcopy__(self, memo: dict) -> _OutputHook:
        return _OutputHook(None)

    def __reduce__(self) -> tuple:
        return (_OutputHook, (None,))


@dataclass
class Gathered:
    """One step's sentinel values on the device, before the transfer: ``vector`` holds
    the loss (when a tensor), the scale (when a scaler runs), the norms of the parameters
    at ``present`` (positions in the sentinel's parameters, in vector order), then the
    per-sample output-gradient norms (``samples`` of them)."""

    vector: torch.Tensor | None
    loss: float | None  # the loss when it was given as a number (not in the vector)
    has_loss: bool  # the vector starts with the loss
    has_scale: bool  # then the scale
    present: np.ndarray
    samples: int


def _stacked(norms: list[tuple[int, torch.Tensor]]) -> list[tuple[list[int], torch.Tensor]]:
    """0-d norms ``(position, norm)`` as :func:`~backprobe.probe.norms.grouped_norms`
    gives them: one stacked vector per device and dtype, with the positions it holds."""
    groups = by_device_and_dtype([n for _, n in norms])
    return [([norms[i][0] for i in g], torch.stack([norms[i][1] for i in g])) for g in groups]


class Pending:
    """An unrecorded step's gathered vector on its way to the host, without a
    synchronisation: on a CUDA device a non-blocking copy into pinned memory followed by
    an event; on the CPU the vector itself; elsewhere a plain (synchronous) copy. One
    pinned buffer serves every step (the probe reads one pending copy before it starts
    the next)."""

    __slots__ = ("event", "gathered", "host", "scaled", "step")

    def __init__(
        self,
        step: int,
        gathered: Gathered,
        scaled: bool,
        host: torch.Tensor | None,
        event: torch.cuda.Event | None,
    ) -> None:
        self.step, self.gathered, self.scaled = step, gathered, scaled
        self.host, self.event = host, event

    @staticmethod
    def start(
        step: int, gathered: Gathered, scaled: bool, pinned: torch.Tensor | None
    ) -> tuple[Pending, torch.Tensor | None]:
        """Start the copy of ``gathered``'s vector; returns the pending read and the pinned
        buffer to keep for the next one."""
        vector = gathered.vector
        if vector is None or vector.device.type == "cpu":
            return Pending(step, gathered, scaled, vector, None), pinned
        if vector.device.type != "cuda":
            return Pending(step, gathered, scaled, vector.cpu(), None), pinned
        n = vector.numel()
        if pinned is None or pinned.numel() < n or pinned.dtype != vector.dtype:
            pinned = torch.empty(max(n, 64), dtype=vector.dtype, pin_memory=True)
        host = pinned[:n]
        host.copy_(vector, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(vector.device))
        return Pending(step, gathered, scaled, host, event), pinned

    def values(self) -> np.ndarray:
        """The host values (waits for the copy if it has not finished)."""
        if self.event is not None:
            self.event.synchronize()
        return np.zeros(0) if self.host is None else self.host.numpy()


class Sentinel:
    """The sentinel of one probe: its output hook and the per-step gathering.

    ``params`` are the probe's (layer entry, parameter) pairs; the sentinel's layers are
    the entries among them, in that order (registration order), and a parameter held by
    two of them (tied) counts under each and once in the global norm.
    """

    def __init__(self, params: Sequence[tuple[int, nn.Parameter]]) -> None:
        entries = list(dict.fromkeys(i for i, _ in params))
        column = {entry: c for c, entry in enumerate(entries)}
        self.entries = entries
        unique: dict[int, tuple[int, nn.Parameter]] = {}  # id → (position, parameter)
        pairs: list[tuple[int, int]] = []  # (parameter position, layer column)
        for i, p in params:
            position, _ = unique.setdefault(id(p), (len(unique), p))
            pairs.append((position, column[i]))
        self._params = [p for _, p in unique.values()]
        self._pair_param = np.asarray([p for p, _ in pairs], np.int64)
        self._pair_column = np.asarray([c for _, c in pairs], np.int64)
        # per-sample norms of this step's outputs, one slot per forward in forward order
        self._outputs: list[torch.Tensor | None] = []
        self._epoch = 0
        self.hook_seconds = 0.0  # the output hooks' time in this step (for the budget)

    def hook(self) -> _OutputHook:
        """The forward hook to register on the model."""
        return _OutputHook(self)

    def on_output(self, output: object) -> None:
        """The model ran a forward: measure its output's gradient when it arrives (not
        for forwards without gradient, recomputes inside backward, or compiled traces)."""
        if tracing() or not torch.is_grad_enabled() or _in_backward():
            return
        started = time.perf_counter()
        t = output_tensor(output)
        if t is not None:
            epoch, slot = self._epoch, len(self._outputs)
            self._outputs.append(None)
            t.register_hook(lambda grad: self._on_grad(epoch, slot, grad))
        self.hook_seconds += time.perf_counter() - started

    def _on_grad(self, epoch: int, slot: int, grad: torch.Tensor) -> None:
        if epoch == self._epoch and grad is not None:
            started = time.perf_counter()
            self._outputs[slot] = row_norms(grad.detach()).float()
            self.hook_seconds += time.perf_counter() - started

    def next_step(self) -> None:
        """The step ended: what hooks of its forwards bring later is ignored."""
        self._epoch += 1
        self._outputs = []
        self.hook_seconds = 0.0

    def gather(
        self,
        loss: torch.Tensor | float | None,
        scale: torch.Tensor | None,
        known: Mapping[int, torch.Tensor] | None = None,
    ) -> Gathered:
        """The step's values on the device (no synchronisation), for one transfer: two
        kernels besides the norms' (a stack of the scalars, a concatenation).

        ``known``: gradient norms a recorded step has just taken (0-d, by ``id`` of the
        gradient, as the sentinel takes them); those gradients are not read again (one
        pass over the gradients instead of two: 1.4 ms a step on the 16×512 MLP).
        """
        present = [
            j
            for j, p in enumerate(self._params)
            if p.grad is not None and p.requires_grad and not is_lazy(p)
        ]
        grads = [self._params[j].grad for j in present]
        known = known or {}
        reused = [k for k, g in enumerate(grads) if id(g) in known]
        fresh = [k for k, g in enumerate(grads) if id(g) not in known]
        values = [
            g if type(g) is torch.Tensor and not g.is_sparse else local_values(g)[0]  # type: ignore[arg-type]
            for g in (grads[k] for k in fresh)
        ]
        groups = _stacked([(k, known[id(grads[k])]) for k in reused])
        groups += [([fresh[k] for k in at], norms) for at, norms in grouped_norms(values)]
        order = np.asarray([present[k] for positions, _ in groups for k in positions], np.int64)
        scalars: list[torch.Tensor] = []
        has_loss = isinstance(loss, torch.Tensor)
        if isinstance(loss, torch.Tensor):
            scalars.append(loss.detach().reshape(()))
        if scale is not None:
            scalars.append(scale.detach().reshape(()))
        parts = [norms for _, norms in groups]
        if scalars:
            parts.insert(0, torch.stack(scalars))
        outputs = [t for t in self._outputs if t is not None]
        parts.extend(outputs)
        vector = None
        if parts:
            device = parts[0].device
            if any(t.device != device for t in parts):  # a model spread over devices
                parts = [t.to(device, non_blocking=True) for t in parts]
            vector = torch.cat(parts)
        return Gathered(
            vector,
            None if loss is None or isinstance(loss, torch.Tensor) else float(loss),
            has_loss,
            scale is not None,
            order,
            sum(t.shape[0] for t in outputs),
        )

    def row(self, gathered: Gathered, host: np.ndarray, grads_scaled: bool) -> np.ndarray:
        """The stored row (see :mod:`~backprobe.store.sentinel`) from the gathered
        vector's host values (float64); ``grads_scaled`` when the parameter gradients
        still carry the loss scale."""
        host = np.asarray(host, np.float64)  # squares of float32 norms overflow float32
        at = 0
        loss = gathered.loss if gathered.loss is not None else np.nan
        if gathered.has_loss:
            loss, at = float(host[0]), 1
        scale = np.nan
        if gathered.has_scale:
            scale, at = float(host[at]), at + 1
        n = gathered.present.size
        norms = host[at : at + n]
        outputs = host[at + n : at + n + gathered.samples]
        if scale > 0 and scale < np.inf:
            outputs = outputs / scale  # the backward pass started from the scaled loss
            if grads_scaled:
                norms = norms / scale
        squares = np.zeros(len(self._params))
        squares[gathered.present] = norms * norms  # float64: no overflow from float32 norms
        had = np.zeros(len(self._params))
        had[gathered.present] = 1.0
        columns = len(self.entries)
        per_layer = np.bincount(self._pair_column, squares[self._pair_param], columns)
        has = np.bincount(self._pair_column, had[self._pair_param], columns) > 0
        layer_norms = np.where(has, np.sqrt(per_layer), np.nan)
        fields = {
            "loss": loss,
            "grad_norm": float(np.sqrt(norms @ norms)) if n else np.nan,
            "gradients": float(n),
            "scale": scale,
            "samples": float(outputs.size),
        }
        # largest first, NaN (a non-finite sample) before all
        ranked = np.argsort(np.where(np.isnan(outputs), -np.inf, -outputs), kind="stable")
        if outputs.size:
            middle = outputs[ranked[(outputs.size - 1) // 2]] + outputs[ranked[outputs.size // 2]]
            fields["out_grad_norm"] = float(np.sqrt(outputs @ outputs))
            fields["out_grad_median"] = float(middle / 2)
        top = ranked[:TOP_SAMPLES]
        return pack_row(fields, top.astype(np.float64), outputs[top], layer_norms)
