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
same outputs) and back-propagates the captured output gradients into the twin's h_t with
``torch.autograd.grad`` — which touches no parameter's ``.grad``. The loss depends on the
module only through its outputs, so this is the loss's own dL/dh_t. Cells
(``nn.RNNCell``, ``nn.LSTMCell``, ``nn.GRUCell``) are called once per step by the user's
loop: :class:`CellWatch` hooks each call's h_t directly, which gives the signal, and
replays the calls of the first sequence for the decay while they form one recurrence
(no gates for cells).

Everything stays on the device and rides in the recorded step's one host transfer.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..errors import ProbeConfigError
from ..theory.bounds import activation_gamma
from .recurrent import UnrolledResult, cell_step, unrolled_forward
from .stats import StepBuffer

#: Fused recurrent modules that the unrolled twin reproduces.
FUSED = (nn.RNN, nn.LSTM, nn.GRU)
CELLS = (nn.RNNCell, nn.LSTMCell, nn.GRUCell)
#: A gate value above this keeps (most of) the memory: the "open" fraction.
GATE_OPEN = 0.9

#: What a watch added to the step's buffer: (sub-layer name, kind) → entry index.
Entries = dict[tuple[str, str], int]


@dataclass(frozen=True)
class TimeSettings:
    """How time profiles are measured.

    batch: sequences of the recorded forward replayed through the twin (the first ones).
        The replay runs step by step, so its cost grows with ``batch × T``.
    exact_max: hidden sizes up to this get the exact spectral norm of dh_T/dh_k (the
        first sequence replayed as that many copies, one backward per sub-layer with the
        identity, then singular values); larger ones get an estimate from ``probes``
        random directions.
    probes: for the estimate, the rows of a random orthonormal matrix Q [probes, H]:
        ||Qᵀ·dh_T/dh_k||₂ is a lower bound on the spectral norm (measured: 0.40–0.55 of
        it for random tanh RNNs of 80 and 128 units; on a geometric decay that moves the
        memory horizon by a step or two). The replay costs ``probes`` copies instead
        of H.
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
    if isinstance(module, CELLS):
        return [name]
    directions = ("", "_reverse") if module.bidirectional else ("",)
    if module.num_layers == 1 and len(directions) == 1:
        return [name]
    return [f"{name}[l{k}{d}]" for k in range(module.num_layers) for d in directions]


def _gamma(module: nn.Module) -> float:
    """max |σ'| of a plain RNN's nonlinearity; NaN for gated cells (no such bound)."""
    if isinstance(module, (nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell)):
        return float("nan")
    return activation_gamma(module.nonlinearity)


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

    def __init__(self, watch: _Watch | None) -> None:
        self._watch = None if watch is None else weakref.ref(watch)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        watch = None if self._watch is None else self._watch()
        if watch is not None:
            watch.on_forward(args, kwargs, output)

    def __deepcopy__(self, memo: dict) -> _WatchHook:
        return _WatchHook(None)

    def __reduce__(self) -> tuple:
        return (_WatchHook, (None,))


class _Watch:
    """Common state of the two watches: the module, its names, the step's epoch."""

    def __init__(self, name: str, module: nn.Module, settings: TimeSettings) -> None:
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


class CellWatch(_Watch):
    """An ``nn.RNNCell`` / ``nn.LSTMCell`` / ``nn.GRUCell``: each call is a time step.

    Each call's h_t is hooked for ||dL/dh_t||. For the decay the calls are replayed at
    ``step()`` from their inputs (the first sequence of the batch) — but only while they
    form one recurrence: every call's state argument is the previous call's output (the
    same tensor objects). A loop that edits the state between calls (attention, resets,
    teacher forcing of h) gets no decay, since a replay would not be its recurrence.
    """

    _MODES: ClassVar[dict[type, str]] = {nn.LSTMCell: "LSTM", nn.GRUCell: "GRU"}

    def reset(self) -> None:
        self._norms: list[torch.Tensor | None] = []
        self._inputs: list[torch.Tensor] = []  # x_t of the first sequence, [1, H_in]
        self._start: object = None  # its state before the first call (None: zeros)
        self._last: object = None  # the previous call's output
        self._chained = True

    def on_forward(self, args: tuple, kwargs: dict, output: object) -> None:
        h = output[0] if isinstance(output, tuple) else output
        if not (self.active and isinstance(h, torch.Tensor) and h.requires_grad):
            return
        self._norms.append(None)
        h.register_hook(partial(self._on_grad, self._epoch, len(self._norms) - 1))
        x = args[0] if args else kwargs.get("input")
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        if self._last is None:
            self._start = None if hx is None else _first_rows(hx)
        elif not _same_state(hx, self._last):
            self._chained = False
        self._last = output
        self._inputs.append(_first_rows(x))

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
            with torch.enable_grad():
                entries[(self.name, "decay")] = buffer.add_extra(self._decay())
        return entries

    def _decay(self) -> torch.Tensor:
        """The first sequence's calls replayed as k copies with the cell's parameters."""
        cell = self.module
        mode = self._MODES.get(type(cell)) or f"RNN_{cell.nonlinearity.upper()}"
        size = cell.hidden_size
        k = size if size <= self.settings.exact_max else self.settings.probes
        x0 = self._inputs[0]
        if self._start is None:
            h = x0.new_zeros(k, size)
            c = x0.new_zeros(k, size) if mode == "LSTM" else None
        elif mode == "LSTM":
            h, c = (s.expand(k, -1) for s in self._start)  # type: ignore[union-attr]
        else:
            h, c = self._start.expand(k, -1), None  # type: ignore[union-attr]
        h = h.detach().requires_grad_()
        params = {name: getattr(cell, name) for name in ("weight_ih", "weight_hh", "bias_ih")}
        params.update(bias_hh=cell.bias_hh, weight_hr=None)
        states = []
        for x in self._inputs:
            gi = F.linear(x.expand(k, -1), params["weight_ih"], params["bias_ih"])
            (h, c), _ = cell_step(mode, gi, (h, c), params)
            states.append(c if mode == "LSTM" else h)  # an LSTM's memory is its c
        directions = _probe_directions(size, self.settings, states[0])
        return _chain_decay(states, False, directions)


def _first_rows(state: object) -> object:
    """The first sequence's row(s), detached, [1, H] (a tuple for an LSTM's (h, c))."""
    if isinstance(state, tuple):
        return tuple(_first_rows(s) for s in state)
    t = state.detach()  # type: ignore[union-attr]
    return t.unsqueeze(0) if t.dim() == 1 else t[:1]


def _same_state(hx: object, output: object) -> bool:
    """Whether a call's state argument is the previous call's output (same tensors)."""
    if isinstance(output, tuple):
        return isinstance(hx, tuple) and all(a is b for a, b in zip(hx, output, strict=False))
    return hx is output


def _take(t: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    return t.narrow(dim, 0, min(n, t.shape[dim])).detach()


def _sub_packed(data: torch.Tensor, like: PackedSequence, n: int) -> PackedSequence:
    """The first ``n`` sequences (user order) of a packed tensor laid out like ``like``."""
    packed = PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)
    padded, lengths = pad_packed_sequence(packed)  # [T, B, F], user order
    n = min(n, padded.shape[1])
    return pack_padded_sequence(padded[:, :n].detach(), lengths[:n], enforce_sorted=False)


class FusedWatch(_Watch):
    """An ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``: replayed through its unrolled twin."""

    def __init__(self, name: str, module: nn.Module, settings: TimeSettings) -> None:
        super().__init__(name, module, settings)
        directions = ("", "_reverse") if module.bidirectional else ("",)
        # per sub-layer, in the order of self.names: its W_hh and whether it runs backwards
        self._chains = [
            (f"weight_hh_l{k}{d}", bool(d)) for k in range(module.num_layers) for d in directions
        ]
        self._warned_dropout = False

    def reset(self) -> None:
        self._input: torch.Tensor | PackedSequence | None = None
        self._packed_like: PackedSequence | None = None
        self._hx: object = None
        self._grads: dict[str, torch.Tensor] = {}

    # -- capture --------------------------------------------------------------------------

    def on_forward(self, args: tuple, kwargs: dict, output: object) -> None:
        if not self.active or self._input is not None or not torch.is_grad_enabled():
            return  # one forward per step: the first (gradient accumulation repeats it)
        module, n = self.module, self.settings.batch
        x = args[0] if args else kwargs.get("input")
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        out, state = output  # type: ignore[misc]
        if isinstance(x, PackedSequence):
            self._packed_like = x
            self._input = _sub_packed(x.data, x, n)
            out_tensor = out.data
        else:
            unbatched = x.dim() == 2
            self._input = x.detach() if unbatched else _take(x, 0 if module.batch_first else 1, n)
            out_tensor = out
        unbatched = not isinstance(x, PackedSequence) and x.dim() == 2
        if hx is not None and not unbatched:
            hx = tuple(_take(h, 1, n) for h in hx) if isinstance(hx, tuple) else _take(hx, 1, n)
        self._hx = hx
        h_n, c_n = state if isinstance(state, tuple) else (state, None)
        for key, t in (("output", out_tensor), ("h_n", h_n), ("c_n", c_n)):
            if t is not None and t.requires_grad:
                t.register_hook(partial(self._on_grad, self._epoch, key, unbatched))

    def _on_grad(self, epoch: int, key: str, unbatched: bool, grad: torch.Tensor) -> None:
        if epoch != self._epoch or key in self._grads:
            return
        n = self.settings.batch
        if unbatched:
            self._grads[key] = grad.detach()
        elif key == "output" and self._packed_like is not None:
            self._grads[key] = _sub_packed(grad, self._packed_like, n).data
        elif key == "output":
            self._grads[key] = _take(grad, 0 if self.module.batch_first else 1, n)
        else:
            self._grads[key] = _take(grad, 1, n)

    # -- measurement ----------------------------------------------------------------------

    def measure(self, buffer: StepBuffer, scale: torch.Tensor | None) -> Entries:
        if self._input is None or not self._grads or self._dropout_hides_the_forward():
            return {}
        module = self.module
        with torch.enable_grad():
            # the twin must reach the states even when the parameters are frozen
            x = self._input
            if isinstance(x, PackedSequence):
                x = PackedSequence(
                    x.data.requires_grad_(), x.batch_sizes, x.sorted_indices, x.unsorted_indices
                )
            else:
                x = x.requires_grad_()
            twin = unrolled_forward(module, x, self._hx)
            outputs, grads = self._twin_outputs(twin)
            chains = [chain for layer in twin.states for chain in layer]
            decays = self._decays()
            flat = [h for chain in chains for h in chain]
            state_grads = torch.autograd.grad(
                outputs, flat, grads, retain_graph=True, allow_unused=True
            )
            entries: Entries = {}
            T = len(chains[0])
            for c, (name, chain) in enumerate(zip(self.names, chains, strict=True)):
                weight, _ = self._chains[c]
                # a state that got no gradient (the loss does not depend on it) counts as 0
                got = [
                    torch.zeros_like(h) if g is None else g
                    for g, h in zip(state_grads[c * T : (c + 1) * T], chain, strict=True)
                ]
                signal = torch.linalg.vector_norm(
                    torch.stack(got).flatten(1), dim=1, dtype=torch.float64
                )
                if scale is not None:
                    signal = signal / scale
                entries[(name, "signal")] = buffer.add_extra(signal)
                entries[(name, "decay")] = buffer.add_extra(decays[c])
                entries[(name, "theory")] = buffer.add_extra(_theory(module, weight))
            if twin.gates is not None:
                gates = torch.stack([g for layer in twin.gates for d in layer for g in d]).detach()
                stats = torch.stack([gates.mean(), gates.gt(GATE_OPEN).float().mean()])
                entries[(self.name, "gates")] = buffer.add_extra(stats)
        return entries

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

    def _twin_outputs(self, twin: UnrolledResult) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The twin's outputs that received a gradient in the real backward, with it."""
        out = twin.output.data if isinstance(twin.output, PackedSequence) else twin.output
        pairs = [("output", out), ("h_n", twin.h_n), ("c_n", twin.c_n)]
        kept = [(t, self._grads[k]) for k, t in pairs if t is not None and k in self._grads]
        return [t for t, _ in kept], [g.to(t.dtype) for t, g in kept]

    def _first_sequence(self, copies: int) -> tuple[torch.Tensor, object]:
        """The sub-batch's first sequence and its h_0, repeated ``copies`` times along the
        batch, in the module's own layout (a packed one: its real steps only)."""
        module, x, hx = self.module, self._input, self._hx
        batch_dim = 0 if module.batch_first else 1
        if isinstance(x, PackedSequence):
            padded, lengths = pad_packed_sequence(x)  # [T, B, F], user order
            first = padded[: int(lengths[0]), :1]
            first = first.transpose(0, 1) if module.batch_first else first
        else:
            first = x.unsqueeze(batch_dim) if x.dim() == 2 else x.narrow(batch_dim, 0, 1)
        shape = list(first.shape)
        shape[batch_dim] = copies
        first = first.detach().requires_grad_().expand(shape)
        if hx is not None:
            unbatched = not isinstance(x, PackedSequence) and x.dim() == 2

            def repeat(h: torch.Tensor) -> torch.Tensor:
                h = h.unsqueeze(1) if unbatched else h[:, :1]
                return h.expand(-1, copies, -1)

            hx = tuple(map(repeat, hx)) if isinstance(hx, tuple) else repeat(hx)
        return first, hx

    def _decays(self) -> list[torch.Tensor]:
        """Per sub-layer, [T] ||ds_end/ds_(end−lag)||₂ for lag = 0…T−1 of the first
        sequence, float64, for the memory state s (h, or an LSTM's cell state c).

        The first sequence is replayed as k identical copies (see :func:`_chain_decay`
        and :func:`_probe_directions`).
        """
        size = self.module.hidden_size  # of h, or of an LSTM's c (proj_size shrinks h only)
        k = size if size <= self.settings.exact_max else self.settings.probes
        x, hx = self._first_sequence(k)
        twin = unrolled_forward(self.module, x, hx)
        # an LSTM keeps its memory in the cell state: its decay is that of c
        memory = twin.states if twin.cells is None else twin.cells
        chains = [chain for layer in memory for chain in layer]
        directions = _probe_directions(size, self.settings, chains[0][0])
        return [
            _chain_decay(chain, reverse, directions)
            for chain, (_, reverse) in zip(chains, self._chains, strict=True)
        ]


def _probe_directions(size: int, settings: TimeSettings, like: torch.Tensor) -> torch.Tensor:
    """[k, size] rows sent back from the last state: the identity (exact, k = size) up to
    ``settings.exact_max`` units, else k = ``settings.probes`` random orthonormal rows Q,
    for which ||Qᵀ·J||₂ ≤ ||J||₂ is a random subspace's view of J."""
    if size <= settings.exact_max:
        return torch.eye(size, dtype=like.dtype, device=like.device)
    gaussian = torch.randn(size, settings.probes, dtype=torch.float64, device=like.device)
    return torch.linalg.qr(gaussian).Q.T.to(like.dtype)


def _chain_decay(
    chain: list[torch.Tensor], reverse: bool, directions: torch.Tensor
) -> torch.Tensor:
    """[T] ||ds_end/ds_(end−lag)||₂ for lag = 0…T−1 from the states ``chain`` [T × [k, H]]
    of k copies of one sequence: one backward sends direction i into copy i's last
    processed state, so the gradient reaching copy i's state at t is row i of
    directions·ds_end/ds_t."""
    order = chain if reverse else chain[::-1]  # lag 0 first
    rows = torch.autograd.grad(order[0], order, directions, retain_graph=True, allow_unused=True)
    jac = torch.stack([torch.zeros_like(directions) if r is None else r for r in rows])
    return _spectral_norms(jac.to(torch.float64))  # jac: [T, k, H]


def _spectral_norms(jac: torch.Tensor) -> torch.Tensor:
    """[T] spectral norms of [T, k, H] matrices; a matrix holding NaN or inf (a diverging
    model) gets its largest |entry| (inf or NaN) instead: the SVD refuses such input, and
    the training step must not fail because the model diverges."""
    finite = jac.isfinite().all(dim=-1).all(dim=-1)
    safe = torch.where(finite[:, None, None], jac, torch.zeros_like(jac))
    return torch.where(finite, torch.linalg.matrix_norm(safe, ord=2), jac.abs().amax(dim=(-2, -1)))


def make_watch(name: str, module: nn.Module, settings: TimeSettings) -> _Watch:
    """The watch for a recurrent module (see :func:`is_recurrent`)."""
    return (CellWatch if isinstance(module, CELLS) else FusedWatch)(name, module, settings)
