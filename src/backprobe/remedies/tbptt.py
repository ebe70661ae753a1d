"""Truncated backpropagation through time, and a meter for the memory it saves.

Full BPTT over a sequence of length T keeps every step's activations until the backward
pass: memory grows with T, and the gradient passes through all T Jacobians (Pascanu eq.
5), where it may vanish or explode. Truncated BPTT(k1, k2) (Williams & Peng 1990;
Sutskever 2013) walks the sequence and, every ``k1`` steps, back-propagates the loss of
those ``k1`` steps through the last ``k2 ≥ k1`` steps only, then updates the parameters.
The hidden state is carried across the whole sequence but *detached* where the gradient
is cut, so the graph held in memory never spans more than ``k2`` steps.

With ``k2 > k1`` the ``k2 − k1`` steps before each chunk are run again from a state kept
(detached) from the previous pass, so each update costs ``k2`` forward steps; ``k2 == k1``
(the common case) recomputes nothing.

The model is anything called as ``model(x_chunk, state) -> (output, state)`` with the
time dimension of ``x`` and ``output`` at ``time_dim`` (0 for time-major, 1 for
``batch_first``) and ``state = None`` at the start: ``nn.RNN``, ``nn.LSTM``, ``nn.GRU``
directly (output = the top layer's hidden states) or a user module wrapping one with a
readout. The state may be a tensor or a (nested) tuple/list of tensors (LSTM's (h, c)).

:class:`SavedTensorMeter` measures the memory honestly on any device: it counts the bytes
of the distinct storages that autograd saves for the backward pass
(``torch.autograd.graph.saved_tensors_hooks``), from the moment they are saved until the
graph that holds them is freed, and keeps the peak. Parameters saved by the graph are
counted too (once, as they are shared), so the figure is what the graph keeps alive.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from backprobe.remedies import truncated_bptt
    >>> _ = torch.manual_seed(0)
    >>> rnn = nn.RNN(1, 8)
    >>> x, y = torch.randn(100, 4, 1), torch.randn(100, 4, 8)  # [T, B, features]
    >>> opt = torch.optim.SGD(rnn.parameters(), lr=0.01)
    >>> result = truncated_bptt(rnn, x, y, nn.functional.mse_loss, opt, k1=20)
    >>> len(result.losses), result.state.shape
    (5, torch.Size([1, 4, 8]))
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import RemedyError

if TYPE_CHECKING:
    from ..probe.probe import Probe

__all__ = ["SavedTensorMeter", "TBPTTResult", "detach_state", "truncated_bptt"]

State = object  # a tensor, None, or a (nested) tuple/list of tensors


def detach_state(state: State) -> State:
    """The same structure with every tensor detached (cuts the graph, keeps the values)."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    if state is None:
        return None
    raise RemedyError(
        f"Expected the model's state to be a tensor or a tuple/list of tensors but got "
        f"{type(state).__name__}; return (output, state) from the model's forward."
    )


@dataclass
class TBPTTResult:
    """``losses``: the loss of each update (floats, one per chunk of k1 steps); ``state``:
    the final state, detached, to continue on the next sequence; ``updates``: how many
    optimizer steps were taken."""

    losses: list[float] = field(default_factory=list)
    state: State = None

    @property
    def updates(self) -> int:
        return len(self.losses)


def _split_output(out: object) -> tuple[torch.Tensor, State]:
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise RemedyError(
            f"Expected the model to return (output, state) but got {type(out).__name__}; "
            f"wrap it so that forward(x, state) returns both (nn.RNN/LSTM/GRU already do)."
        )
    return out[0], out[1]


def truncated_bptt(
    model: nn.Module | Callable[[torch.Tensor, State], tuple[torch.Tensor, State]],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    k1: int,
    k2: int | None = None,
    state: State = None,
    time_dim: int = 0,
    clip: Callable[[list[torch.Tensor]], object] | None = None,
    probe: Probe | None = None,
) -> TBPTTResult:
    """Train ``model`` on one long batch of sequences with truncated BPTT(k1, k2).

    Args:
        model: ``model(x_chunk, state) -> (output, state)``; see the module docstring.
        inputs: [T, B, …] (or [B, T, …] with ``time_dim=1``).
        targets: per-step targets, sliced along ``time_dim`` like ``inputs``.
        loss_fn: ``loss_fn(output_chunk, target_chunk)`` -> scalar, on the chunk's k1 steps.
        optimizer: stepped (and zeroed) once per chunk.
        k1: steps between updates (and the steps whose loss each update uses).
        k2: steps the gradient goes back (default ``k1``; must be ≥ ``k1``).
        state: the initial state (``None``: the model's zeros).
        time_dim: the time dimension of inputs, targets and outputs.
        clip: called as ``clip(parameters)`` between backward and the optimizer step,
            e.g. ``lambda ps: clip_grad_norm_(ps, 1.0, probe=probe)``.
        probe: a ``backprobe.Probe``; ``probe.step(loss)`` is called after each backward
            (and after ``clip``), before the optimizer step.

    Returns:
        :class:`TBPTTResult` with the per-update losses and the final detached state.
    """
    k2 = k1 if k2 is None else k2
    if not (isinstance(k1, int) and isinstance(k2, int) and 1 <= k1 <= k2):
        raise RemedyError(
            f"Expected integers 1 <= k1 <= k2 but got k1={k1!r}, k2={k2!r}; k2 is how far back "
            f"the gradient goes, at least the k1 steps whose loss is used."
        )
    if inputs.dim() < 2 or time_dim not in (0, 1):
        raise RemedyError(
            f"Expected inputs [T, B, …] (time_dim=0) or [B, T, …] (time_dim=1) but got shape "
            f"{tuple(inputs.shape)} and time_dim={time_dim!r}."
        )
    length = inputs.shape[time_dim]
    if targets.shape[time_dim] != length:
        raise RemedyError(
            f"Expected targets with the same {length} steps as inputs along dim {time_dim} "
            f"but got shape {tuple(targets.shape)}; give one target per step."
        )
    params = [p for group in optimizer.param_groups for p in group["params"]]
    result = TBPTTResult()
    saved = detach_state(state)  # the detached state at time `start` of the next pass
    n_chunks = -(-length // k1)
    for j in range(1, n_chunks + 1):
        start = max(0, j * k1 - k2)  # the gradient goes back to here (k2 steps)
        restart = min(max(0, (j + 1) * k1 - k2), length)  # where the next pass starts
        first, end = (j - 1) * k1, min(j * k1, length)  # the steps whose loss is used
        state_now, outputs = saved, []
        for a, b in ((start, restart), (restart, end)):
            if b > a:
                out, state_now = _split_output(model(inputs.narrow(time_dim, a, b - a), state_now))
                outputs.append(out)
            if b == restart:
                saved = detach_state(state_now)
        output = torch.cat(outputs, dim=time_dim) if len(outputs) > 1 else outputs[0]
        loss = loss_fn(
            output.narrow(time_dim, output.shape[time_dim] - (end - first), end - first),
            targets.narrow(time_dim, first, end - first),
        )
        loss.backward()
        if clip is not None:  # before probe.step, so that a clip recording on the probe
            clip(params)  # (record_scalar) lands on this step
        if probe is not None:
            probe.step(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(float(loss.detach()))
        result.state = detach_state(state_now)
    return result


class SavedTensorMeter:
    """Counts the bytes autograd keeps for backward while the context is active.

    ``current_bytes`` is the size of the distinct storages saved by graphs that are still
    alive; ``peak_bytes`` its maximum. A storage saved by several operations (a weight
    used at every time step) counts once, and a view counts its whole storage (what it
    keeps alive). Storages of the tensors in ``ignore`` are not counted: pass the data
    and the parameters, which live whatever the graph does, to measure the activations.

    Example:
        >>> import torch
        >>> w = torch.randn(1000, requires_grad=True)
        >>> with SavedTensorMeter() as meter:
        ...     loss = (w.exp() * 2).sum()  # exp saves its 4000-byte result
        >>> meter.peak_bytes
        4000
        >>> loss.backward(); meter.current_bytes
        0
    """

    def __init__(self, ignore: Iterable[torch.Tensor] = ()) -> None:
        self.current_bytes = 0
        self.peak_bytes = 0
        self._counts: dict[tuple[str, int], int] = {}
        self._ignore = {_storage_key(t) for t in ignore}
        self._context = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _release(self, key: tuple[str, int], nbytes: int) -> None:
        self._counts[key] -= 1
        if self._counts[key] == 0:
            del self._counts[key]
            self.current_bytes -= nbytes

    def _pack(self, tensor: torch.Tensor) -> _Saved:
        key = _storage_key(tensor)
        if key in self._ignore:
            return _Saved(tensor)
        nbytes = tensor.untyped_storage().nbytes()
        if key not in self._counts:
            self._counts[key] = 0
            self.current_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        self._counts[key] += 1
        saved = _Saved(tensor)
        weakref.finalize(saved, self._release, key, nbytes)
        return saved

    @staticmethod
    def _unpack(saved: _Saved) -> torch.Tensor:
        return saved.tensor

    def __enter__(self) -> SavedTensorMeter:
        self._context.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(*exc)


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return (str(tensor.device), tensor.untyped_storage().data_ptr())


class _Saved:
    """A saved tensor; its finalizer tells the meter when autograd lets it go."""

    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
