"""Per-time-step backward signals of recurrent layers, measured at recorded steps.

Backpropagation through time multiplies the gradient by W_recᵀ·diag(σ'(x_{t−1})) at every
step back (Pascanu et al. 2013, eq. 5), so ||dL/dh_t|| shrinks or grows with the distance
from the loss. This module measures, for each probed recurrent layer:

* ``signal``: ||dL/dh_t|| for every t — the total BPTT gradient at h_t, the path through
  later steps included — over a sub-batch of the recorded forward;
* ``decay``: ||dh_T/dh_(T−lag)||₂ for every lag, the spectral norm of the product of
  step Jacobians, for the sub-batch's first sequence; its *memory horizon* is the lag
  where it falls below 1e-3 (``store.view.RunView.memory_horizon``). For an LSTM it is
  ||dc_T/dc_(T−lag)||₂ of the cell state c (total derivatives, the path through h
  included): an LSTM carries its memory in c, and a trained one that holds a bit over
  50 steps can show a short h-to-h decay while its c-to-c decay stays near 1;
* ``theory``: λ1 of W_hh and γ = max |σ'|, so that readers can draw Hochreiter's and
  Pascanu's bound (γ·λ1)^lag beside the measurement;
* for LSTM and GRU, the memory gate (forget, update): its mean and the fraction of its
  values above 0.9, the gates that keep the gradient alive over long lags.

How. ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` run all time steps inside one fused kernel,
so h_t is not a tensor anyone can hook. :class:`FusedWatch` keeps the recorded forward's
input (the first ``batch`` sequences, detached) and, through tensor hooks, the gradients
that reached the module's outputs. At ``Probe.step()`` it replays that sub-batch through
the unrolled twin (:func:`~backprobe.probe.recurrent.unrolled_forward`, same parameters,
same outputs, no graph) and carries the captured output gradients back through the
twin's steps with the written-out backward of :mod:`backprobe.probe.bptt` — which
touches no parameter's ``.grad``. The loss depends on the module only through its
outputs, so this is the loss's own dL/dh_t (equal to autograd's on the twin; tested).
The decay comes from the replay's states of the first sequence:
:func:`~backprobe.probe.decay.memory_decay` rebuilds every step's gates from them and
carries k rows back through the same recursion in float64. Cells (``nn.RNNCell``,
``nn.LSTMCell``, ``nn.GRUCell``) are called once per step by the user's loop:
:class:`CellWatch` hooks each call's h_t directly, which gives the signal, and keeps the
first sequence's inputs and states for the decay while the calls form one recurrence
(no gates for cells).

Everything stays on the device and rides in the recorded step's one host transfer.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..errors import ProbeConfigError
from ..theory.bounds import activation_gamma
from .bptt import backward, recurrence
from .compiled import tracing
from .decay import memory_decay
from .recurrent import StepParams, UnrolledResult, layer_params, real_steps, unrolled_forward
from .stats import StepBuffer

#: Fused recurrent modules that the unrolled twin reproduces.
FUSED = (nn.RNN, nn.LSTM, nn.GRU)
CELLS = (nn.RNNCell, nn.LSTMCell, nn.GRUCell)
#: A gate value above this keeps (most of) the memory: the "open" fraction.
GATE_OPEN = 0.9

#: What a watch added to the step's buffer: (sub-layer name, kind) → entry index.
Entries = dict[tuple[str, str], int]
#: A recurrent state: h, or an LSTM's (h, c).
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
#: The recurrent module a watch measures.
Watched = TypeVar("Watched", bound=nn.Module, covariant=True)


@dataclass(frozen=True)
class TimeSettings:
    """How time profiles are measured.

    batch: sequences of the recorded forward replayed through the twin (the first ones).
        The replay runs step by step, so its cost grows with ``batch × T``.
    exact_max: hidden sizes up to this get the exact spectral norm of dh_T/dh_k (the
        identity's H rows carried back through the step Jacobians); larger ones get an
        estimate from ``probes`` random directions.
    probes: for the estimate, the rows of a random orthonormal matrix Q [probes, H]:
        ||Qᵀ·dh_T/dh_k||₂ is a lower bound on the spectral norm (measured: 0.40–0.55 of
        it for random tanh RNNs of 80 and 128 units; on a geometric decay that moves the
        memory horizon by a step or two). The recursion carries ``probes`` rows
        instead of H.
    """

    batch: int = 8
    exact_max: int = 64
    probes: int = 16

    def __post_init__(self) -> None:
        for field_name in ("batch", "exact_max", "probes"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ProbeConfigError(
                    f"Expected time_{field_name} to be a positive integer but got {value!r}."
                )


def is_recurrent(module: nn.Module) -> bool:
    """Whether the probe measures time profiles of ``module``."""
    return isinstance(module, FUSED + CELLS)


def sub_layer_names(name: str, module: nn.Module) -> list[str]:
    """The stored names of a module's recurrences, in PyTorch's order (layer 0 forward,
    layer 0 reverse, layer 1 forward, …): ``name`` alone for one layer and direction,
    else ``name[l0]``, ``name[l0_reverse]``… after the parameter suffixes."""
    if not isinstance(module, nn.RNNBase):  # a cell
        return [name]
    directions = ("", "_reverse") if module.bidirectional else ("",)
    if module.num_layers == 1 and len(directions) == 1:
        return [name]
    return [f"{name}[l{k}{d}]" for k in range(module.num_layers) for d in directions]


def _gamma(module: nn.Module) -> float:
    """max |σ'| of a plain RNN's nonlinearity; NaN for gated cells (no such bound)."""
    if isinstance(module, (nn.RNN, nn.RNNCell)):
        return activation_gamma(module.nonlinearity)
    return float("nan")


def _theory(module: nn.Module, weight_name: str) -> torch.Tensor:
    """[2] on the device: λ1 of the recurrent matrix and γ (NaN for gated cells, whose
    stacked W_hh has no single λ1 that bounds the gradient)."""
    gamma = _gamma(module)
    W = getattr(module, weight_name).detach()
    if gamma != gamma:  # NaN
        return W.new_full((2,), float("nan"), dtype=torch.float64)
    lam = torch.linalg.matrix_norm(W.to(torch.float64), ord=2)
    return torch.stack([lam, lam.new_tensor(gamma)])


class _WatchHook:
    """A forward hook (with kwargs) that calls back into its watch, held weakly; a deep
    copy or pickle of the model gets an inert hook, as for the probe's other hooks."""

    __slots__ = ("_watch",)

    def __init__(self, watch: _Watch[nn.Module] | None) -> None:
        self._watch = None if watch is None else weakref.ref(watch)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        if tracing():  # compiled graphs carry no probe work (see probe.compiled)
            return
        watch = None if self._watch is None else self._watch()
        if watch is not None:
            watch.on_forward(args, kwargs, output)

    def __deepcopy__(self, memo: dict) -> _WatchHook:
        return _WatchHook(None)

    def __reduce__(self) -> tuple:
        return (_WatchHook, (None,))


class _Watch(Generic[Watched]):
    """Common state of the two watches: the module, its names, the step's epoch."""

    def __init__(self, name: str, module: Watched, settings: TimeSettings) -> None:
        self.name = name
        self.module = module
        self.settings = settings
        self.names = sub_layer_names(name, module)
        self.active = False  # capture forwards of the current step
        self._epoch = 0

    def hook(self) -> _WatchHook:
        return _WatchHook(self)

    def start(self, active: bool) -> None:
        """A new step begins: forget the last one's capture; capture this one if active."""
        self._epoch += 1
        self.active = active
        self.reset()

    def reset(self) -> None:
        raise NotImplementedError

    def on_forward(self, args: tuple, kwargs: dict, output: object) -> None:
        raise NotImplementedError

    def measure(self, buffer: StepBuffer, scale: torch.Tensor | None) -> Entries:
        raise NotImplementedError


class CellWatch(_Watch[nn.RNNCell | nn.LSTMCell | nn.GRUCell]):
    """An ``nn.RNNCell`` / ``nn.LSTMCell`` / ``nn.GRUCell``: each call is a time step.

    Each call's h_t is hooked for ||dL/dh_t||. For the decay each call's input and output
    state of the first sequence are kept, and the step Jacobians are rebuilt from them
    at ``step()`` — but only while the calls form one recurrence: every call's state
    argument is the previous call's output (the same tensor objects). A loop that edits
    the state between calls (attention, resets, teacher forcing of h) gets no decay,
    since the product of the cell's Jacobians would not be its recurrence's.
    """

    def reset(self) -> None:
        self._norms: list[torch.Tensor | None] = []
        self._inputs: list[torch.Tensor] = []  # x_t of the first sequence, [1, H_in]
        self._hs: list[torch.Tensor] = []  # its h_t [1, H]
        self._cs: list[torch.Tensor] = []  # an LSTM's c_t [1, H] (empty for others)
        self._start: State | None = None  # its state before the first call (None: zeros)
        self._last: object = None  # the previous call's output
        self._chained = True

    def on_forward(self, args: tuple, kwargs: dict, output: object) -> None:
        state = _as_state(output)
        h = state[0] if isinstance(state, tuple) else state
        if not (self.active and h is not None and h.requires_grad):
            return
        self._norms.append(None)
        h.register_hook(partial(self._on_grad, self._epoch, len(self._norms) - 1))
        x = args[0] if args else kwargs["input"]  # the cell ran, so it had an input
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        if self._last is None:
            self._start = None if hx is None else _first_rows(hx)
        elif not _same_state(hx, self._last):
            self._chained = False
        self._last = output
        self._inputs.append(_first_row(x))
        self._hs.append(_first_row(h))
        if isinstance(state, tuple):
            self._cs.append(_first_row(state[1]))

    def _on_grad(self, epoch: int, t: int, grad: torch.Tensor) -> None:
        if epoch == self._epoch:
            rows = grad if grad.dim() == 1 else grad[: self.settings.batch]
            self._norms[t] = torch.linalg.vector_norm(rows, dtype=torch.float64)

    def measure(self, buffer: StepBuffer, scale: torch.Tensor | None) -> Entries:
        if not any(n is not None for n in self._norms):
            return {}
        like = next(n for n in self._norms if n is not None)
        signal = torch.stack([like.new_zeros(()) if n is None else n for n in self._norms])
        if scale is not None:
            signal = signal / scale
        entries = {
            (self.name, "signal"): buffer.add_extra(signal),
            (self.name, "theory"): buffer.add_extra(_theory(self.module, "weight_hh")),
        }
        if self._chained:
            entries[(self.name, "decay")] = buffer.add_extra(self._decay())
        return entries

    def _decay(self) -> torch.Tensor:
        """[T] the first sequence's decay, from its recorded calls."""
        cell = self.module
        if isinstance(cell, nn.LSTMCell):
            mode = "LSTM"
        elif isinstance(cell, nn.GRUCell):
            mode = "GRU"
        else:
            mode = f"RNN_{cell.nonlinearity.upper()}"
        params = StepParams(
            weight_ih=cell.weight_ih,
            weight_hh=cell.weight_hh,
            bias_ih=cell.bias_ih,
            bias_hh=cell.bias_hh,
            weight_hr=None,
        )
        x, h = torch.cat(self._inputs), torch.cat(self._hs)
        c = torch.cat(self._cs) if self._cs else None
        return _sequence_decay(mode, params, x, self._start_state(h, c), h, c, self.settings)

    def _start_state(
        self, h: torch.Tensor, c: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first sequence's state [1, H] before the first call (and an LSTM's cell
        state): zeros, as for a call with ``hx=None``, when none was passed."""
        if isinstance(self._start, tuple):
            return self._start
        if self._start is not None:
            return self._start, None
        zeros = h.new_zeros(1, h.shape[-1])
        return zeros, (None if c is None else c.new_zeros(1, c.shape[-1]))


def _sequence_decay(
    mode: str,
    params: StepParams,
    x: torch.Tensor,
    start: tuple[torch.Tensor, torch.Tensor | None],
    h: torch.Tensor,
    c: torch.Tensor | None,
    settings: TimeSettings,
) -> torch.Tensor:
    """[T] ||ds_end/ds_(end−lag)||₂ of one sequence from its steps in processing order:
    inputs ``x`` [T, F], states ``h`` [T, H_out] and, for an LSTM, ``c`` [T, H]; ``start``
    the state (h_0 [1, H_out], c_0 [1, H] or None) before the first step."""
    h0, c0 = start
    h_prev = torch.cat([h0.reshape(1, -1), h[:-1]])
    c_prev = None if c is None or c0 is None else torch.cat([c0.reshape(1, -1), c[:-1]])
    memory = h if c is None else c  # an LSTM keeps its memory in the cell state
    directions = _probe_directions(memory.shape[-1], settings, memory)
    return memory_decay(mode, params, x, h_prev, h, c_prev, c, directions)


def _as_state(value: object) -> State | None:
    """``value`` (a recurrent module's output or state argument) as a state, or None when
    it is neither a tensor nor a pair of tensors."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        h, c = value
        if isinstance(h, torch.Tensor) and isinstance(c, torch.Tensor):
            return h, c
    return None


def _first_row(t: torch.Tensor) -> torch.Tensor:
    """The first sequence's row of ``t`` [B, ·] (or unbatched [·]), detached, [1, ·]."""
    t = t.detach()
    return t.unsqueeze(0) if t.dim() == 1 else t[:1]


def _first_rows(state: State) -> State:
    """The first sequence's row(s), detached, [1, H] (a tuple for an LSTM's (h, c))."""
    if isinstance(state, tuple):
        return _first_row(state[0]), _first_row(state[1])
    return _first_row(state)


def _same_state(hx: object, output: object) -> bool:
    """Whether a call's state argument is the previous call's output (same tensors)."""
    if isinstance(output, tuple):
        return isinstance(hx, tuple) and all(a is b for a, b in zip(hx, output, strict=False))
    return hx is output


def _time_major(t: torch.Tensor, batch_first: bool, unbatched: bool) -> torch.Tensor:
    """[T, B, F] from a recurrent module's input or output layout (B = 1 when unbatched)."""
    if unbatched:
        return t.unsqueeze(1)
    return t.transpose(0, 1) if batch_first else t


def _sub_batch(t: torch.Tensor, n: int, unbatched: bool) -> torch.Tensor:
    """The first ``n`` sequences' rows [L·D, n, H] of a state or its gradient, detached;
    an unbatched [L·D, H] one becomes [L·D, 1, H]."""
    t = t.detach()
    return t.unsqueeze(1) if unbatched else t[:, :n]


def _rows(state: State, n: int, unbatched: bool) -> State:
    """:func:`_sub_batch` of h_0 (of both parts of an LSTM's (h_0, c_0))."""
    if isinstance(state, tuple):
        return _sub_batch(state[0], n, unbatched), _sub_batch(state[1], n, unbatched)
    return _sub_batch(state, n, unbatched)


def _padded(data: torch.Tensor, like: PackedSequence, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` sequences (user order) of a packed tensor ``data`` laid out like
    ``like``: [T, n, F] time-major, zero-padded, cut to their longest length, detached;
    and their lengths [n]."""
    packed = PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)
    padded, lengths = pad_packed_sequence(packed)  # [T, B, F], user order
    lengths = lengths[:n]
    return padded[: int(lengths.max()), :n].detach(), lengths


class FusedWatch(_Watch[nn.RNNBase]):
    """An ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``: replayed through its unrolled twin.

    The replay of the sub-batch gives the signal, by back-propagating the gradients
    captured at the module's outputs into the twin's states; its first sequence's states
    give the decay (:func:`~backprobe.probe.decay.memory_decay`), per sub-layer with the
    layer's input held fixed.
    """

    def __init__(self, name: str, module: nn.RNNBase, settings: TimeSettings) -> None:
        super().__init__(name, module, settings)
        directions = ("", "_reverse") if module.bidirectional else ("",)
        # per sub-layer, in the order of self.names: its W_hh and whether it runs backwards
        self._chains = [
            (f"weight_hh_l{k}{d}", bool(d)) for k in range(module.num_layers) for d in directions
        ]
        self._warned_dropout = False

    def reset(self) -> None:
        self._input: torch.Tensor | None = None  # [T, n, F], time-major, zero-padded
        self._lengths: torch.Tensor | None = None  # [n] for packed input, else None
        self._hx: State | None = None  # h_0 [L·D, n, H] (a tuple for an LSTM), or None
        # output [T, n, D·H_out]; h_n and c_n [L·D, n, ·]: the gradients that reached them
        self._grads: dict[str, torch.Tensor] = {}

    # -- capture --------------------------------------------------------------------------

    def on_forward(self, args: tuple, kwargs: dict, output: object) -> None:
        if not self.active or self._input is not None or not torch.is_grad_enabled():
            return  # one forward per step: the first (gradient accumulation repeats it)
        if not isinstance(output, tuple):
            return  # not the (output, h_n) of nn.RNN, nn.LSTM or nn.GRU
        module, n = self.module, self.settings.batch
        x = args[0] if args else kwargs["input"]  # the module ran, so it had an input
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        out, state = output
        packed = x if isinstance(x, PackedSequence) else None
        unbatched = packed is None and x.dim() == 2
        if packed is not None:
            self._input, self._lengths = _padded(packed.data, packed, n)
        else:
            self._input = _time_major(x, module.batch_first, unbatched)[:, :n].detach()
        self._hx = None if hx is None else _rows(hx, n, unbatched)
        h_n, c_n = state if isinstance(state, tuple) else (state, None)
        out_tensor = out.data if packed is not None else out
        for key, t in (("output", out_tensor), ("h_n", h_n), ("c_n", c_n)):
            if t is not None and t.requires_grad:
                t.register_hook(partial(self._on_grad, self._epoch, key, packed, unbatched))

    def _on_grad(
        self,
        epoch: int,
        key: str,
        packed: PackedSequence | None,
        unbatched: bool,
        grad: torch.Tensor,
    ) -> None:
        if epoch != self._epoch or key in self._grads:
            return
        n = self.settings.batch
        if key != "output":
            self._grads[key] = _sub_batch(grad, n, unbatched)
        elif packed is not None:
            self._grads[key] = _padded(grad, packed, n)[0]
        else:
            grad = _time_major(grad, self.module.batch_first, unbatched)
            self._grads[key] = grad[:, :n].detach()

    # -- measurement ----------------------------------------------------------------------

    def measure(self, buffer: StepBuffer, scale: torch.Tensor | None) -> Entries:
        x = self._input
        if x is None or not self._grads or self._dropout_hides_the_forward():
            return {}
        with torch.no_grad():
            twin = self._replay(x)
            signals, decays = self._profiles(twin, x)
        entries: Entries = {}
        for name, signal, decay, (weight, _) in zip(
            self.names, signals, decays, self._chains, strict=True
        ):
            entries[(name, "signal")] = buffer.add_extra(
                signal if scale is None else signal / scale
            )
            entries[(name, "decay")] = buffer.add_extra(decay)
            entries[(name, "theory")] = buffer.add_extra(_theory(self.module, weight))
        if twin.gates is not None:
            gates = torch.stack([g for layer in twin.gates for d in layer for g in d]).detach()
            stats = torch.stack([gates.mean(), gates.gt(GATE_OPEN).float().mean()])
            entries[(self.name, "gates")] = buffer.add_extra(stats)
        return entries

    def _replay(self, x: torch.Tensor) -> UnrolledResult:
        """The unrolled twin on the sub-batch ``x`` [T, n, F] (the captured input), in the
        module's layout (packed again when the input was)."""
        replayed: torch.Tensor | PackedSequence = x
        if self._lengths is not None:
            replayed = pack_padded_sequence(x, self._lengths, enforce_sorted=False)
        elif self.module.batch_first:
            replayed = x.transpose(0, 1)
        return unrolled_forward(self.module, replayed, self._hx)

    def _profiles(
        self, twin: UnrolledResult, x: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per sub-layer, in the order of ``self.names``: [T] float64 ||dL/dh_t|| over the
        sub-batch, and [length] ||ds_end/ds_(end−lag)||₂ of its first sequence (its real
        steps when packed), from the replay's states.

        The signal is the written-out backward (:func:`~backprobe.probe.bptt.backward`) of
        each sub-layer, in the model's precision, fed the gradients captured at the
        module's outputs, from the top layer down: the gradient that a layer passes to its
        inputs is what the layer below receives at its output. The decay holds the layer's
        input fixed (:func:`~backprobe.probe.decay.memory_decay`).
        """
        module = self.module
        T = x.shape[0]
        dtype = torch.promote_types(x.dtype, torch.float32)
        real = None if self._lengths is None else real_steps(self._lengths, T).to(x.device)
        h0, c0 = self._start_states(x)
        hs = [[torch.stack(chain) for chain in layer] for layer in twin.states]
        cs = (
            None
            if twin.cells is None
            else [[torch.stack(c) for c in layer] for layer in twin.cells]
        )
        above, h_n, c_n = self._output_grads(x, dtype)  # at the top output, h_n, c_n
        n_dirs = len(hs[0])
        signals: dict[int, torch.Tensor] = {}  # by sub-layer, filled from the top down
        decays: dict[int, torch.Tensor] = {}
        for layer in range(module.num_layers - 1, -1, -1):
            layer_input = x if layer == 0 else torch.cat(hs[layer - 1], dim=-1)
            below = torch.zeros_like(layer_input, dtype=dtype)
            for d in range(n_dirs):
                c = layer * n_dirs + d
                order = _reverse_time if d == 1 else _same_time
                h = order(hs[layer][d])
                steps = {
                    "x": order(layer_input),
                    "h_prev": torch.cat([h0[c : c + 1], h[:-1]]),
                    "h": h,
                }
                if cs is not None and c0 is not None:  # LSTM
                    cell = order(cs[layer][d])
                    steps.update(c_prev=torch.cat([c0[c : c + 1], cell[:-1]]), c=cell)
                params = layer_params(module, layer, d == 1)
                live = None if real is None else order(real)
                rec = recurrence(module.mode, params, **steps, real=live, dtype=dtype)
                width = h.shape[-1]
                inject = order(above[..., d * width : (d + 1) * width])
                back = backward(rec, inject, h_n[c], None if c_n is None else c_n[c])
                norms = torch.linalg.vector_norm(back.h, dim=(1, 2), dtype=torch.float64)
                signals[c] = order(norms)
                if layer > 0:
                    below += order(back.inputs(rec))
                decays[c] = self._first_decay(params, steps, live)
            above = below
        order_of_names = range(len(self._chains))
        return [signals[c] for c in order_of_names], [decays[c] for c in order_of_names]

    def _first_decay(
        self, params: StepParams, steps: dict[str, torch.Tensor], live: torch.Tensor | None
    ) -> torch.Tensor:
        """[length] the decay of the sub-batch's first sequence over its real steps, from a
        sub-layer's ``steps`` (``x``, ``h_prev``, ``h`` and an LSTM's ``c_prev`` and ``c``,
        [T, n, ·] in processing order) and ``live`` ([T, n, 1], False at padded steps)."""
        first = {k: v[:, 0] if live is None else v[live[:, 0, 0], 0] for k, v in steps.items()}
        start = (first["h_prev"][:1], first["c_prev"][:1] if "c" in first else None)
        h, c = first["h"], first.get("c")
        return _sequence_decay(self.module.mode, params, first["x"], start, h, c, self.settings)

    def _start_states(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The sub-batch's h_0 [L·D, n, H_out] and, for an LSTM, c_0 [L·D, n, H], for its
        input ``x`` [T, n, F]."""
        module, hx = self.module, self._hx
        if hx is not None:
            return hx if isinstance(hx, tuple) else (hx, None)
        n = x.shape[1]
        h0 = x.new_zeros(len(self._chains), n, module.proj_size or module.hidden_size)
        c0 = h0.new_zeros(len(self._chains), n, module.hidden_size)
        return h0, (c0 if module.mode == "LSTM" else None)

    def _output_grads(
        self, x: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Gradients (in ``dtype``) captured in the real backward, zero where none arrived: at
        the output [T, n, D·H_out] (time-major, like the input ``x`` [T, n, F]), at h_n
        [L·D, n, H_out] and, for an LSTM, at c_n [L·D, n, H] (None for RNN and GRU)."""
        module, grads = self.module, self._grads
        T, n = x.shape[:2]
        out_size = module.proj_size or module.hidden_size
        n_dirs = 2 if module.bidirectional else 1
        like = x.new_zeros((), dtype=dtype)

        def captured(key: str, shape: tuple[int, ...]) -> torch.Tensor:
            got = grads.get(key)
            return like.new_zeros(shape) if got is None else got.to(dtype)

        output = captured("output", (T, n, n_dirs * out_size))
        h_n = captured("h_n", (len(self._chains), n, out_size))
        c_n = None
        if module.mode == "LSTM":
            c_n = captured("c_n", (len(self._chains), n, module.hidden_size))
        return output, h_n, c_n

    def _dropout_hides_the_forward(self) -> bool:
        """Dropout between the layers of a training module draws masks that no replay can
        reproduce, so its time profile would explain another forward than the loss's:
        skip it (with one warning) while it trains; eval mode or dropout=0 measure."""
        module = self.module
        if not (module.training and module.dropout > 0 and module.num_layers > 1):
            return False
        if not self._warned_dropout:
            self._warned_dropout = True
            warnings.warn(
                f"backprobe records no time profile of {self.name!r} while it trains: its "
                f"dropout={module.dropout} between layers cannot be replayed. Profiles "
                f"resume in eval mode (e.g. at evaluation steps) or with dropout=0.",
                stacklevel=4,
            )
        return True


def _same_time(t: torch.Tensor) -> torch.Tensor:
    """A forward direction's steps: processing order is time order."""
    return t


def _reverse_time(t: torch.Tensor) -> torch.Tensor:
    """A reverse direction's steps: from time order to processing order and back."""
    return t.flip(0)


def _probe_directions(size: int, settings: TimeSettings, like: torch.Tensor) -> torch.Tensor:
    """[k, size] float64 rows sent back from the last state: the identity (exact,
    k = size) up to ``settings.exact_max`` units, else k = ``settings.probes`` random
    orthonormal rows Q, for which ||Qᵀ·J||₂ ≤ ||J||₂ is a random subspace's view of J.
    Q is drawn from a generator of its own with a fixed seed: the user's random stream
    (dropout, shuffling) must not move because the probe recorded a step."""
    if size <= settings.exact_max:
        return torch.eye(size, dtype=torch.float64, device=like.device)
    generator = torch.Generator(device=like.device).manual_seed(0)
    gaussian = torch.randn(
        size, settings.probes, dtype=torch.float64, device=like.device, generator=generator
    )
    return torch.linalg.qr(gaussian).Q.T


def make_watch(name: str, module: nn.Module, settings: TimeSettings) -> CellWatch | FusedWatch:
    """The watch for a recurrent module (see :func:`is_recurrent`); raises
    :class:`~backprobe.errors.ProbeConfigError` for any other module."""
    if isinstance(module, CELLS):
        return CellWatch(name, module, settings)
    if isinstance(module, FUSED):
        return FusedWatch(name, module, settings)
    raise ProbeConfigError(
        f"Expected a recurrent module (nn.RNN, nn.LSTM, nn.GRU or one of their cells) for "
        f"the time profile of {name!r} but got {type(module).__name__}; check "
        f"is_recurrent(module) first."
    )
