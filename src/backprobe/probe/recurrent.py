"""An unrolled twin of ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` that exposes every h_t.

The fused (cuDNN or native) recurrent kernels compute all time steps inside one call, so a
forward hook sees only the output sequence and h_n, and a backward hook on the output sees
dL/d(output_t) — the gradient arriving at step t *from above*, without the part that flows
back from later steps through the recurrence. The quantity that vanishes or explodes
through time is the total dL/dh_t, which includes that recurrent path.

:func:`unrolled_forward` recomputes the module's forward one step at a time with the
module's own parameters (``weight_ih_l{k}{_reverse}``, ``weight_hh_…``, ``bias_ih_…``,
``bias_hh_…`` and, for an LSTM with ``proj_size``, ``weight_hr_…``), so

* its ``output``, ``h_n`` (and ``c_n``) equal the fused module's up to float rounding;
* gradients of a loss on them reach the same parameters (and the input) as the fused
  module's would;
* every h_t is a node of the graph that both the next step and the layer's output use, so
  ``retain_grad()`` or a hook on it yields the total dL/dh_t.

Equations (PyTorch's, column vectors, gate blocks stacked in the weights' rows in this
order):

    RNN   h_t = σ(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh),   σ = tanh or relu
    LSTM  i, f, g, o = σ(·), σ(·), tanh(·), σ(·) of W_ih x_t + b_ih + W_hh h_{t−1} + b_hh
          c_t = f ⊙ c_{t−1} + i ⊙ g,   h_t = o ⊙ tanh(c_t)   (then h_t = W_hr h_t if proj_size)
    GRU   r, z = σ(W_ir x_t + b_ir + W_hr h_{t−1} + b_hr), σ(W_iz x_t + …)   (W_hr: W_hh's r rows)
          n = tanh(W_in x_t + b_in + r ⊙ (W_hn h_{t−1} + b_hn)),   h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}

Decisions.

* Dropout between layers is refused while the module trains (``module.training`` and
  ``dropout > 0`` with more than one layer): the fused kernel draws its masks from its own
  random stream, which a twin cannot reproduce, so the twin's h_t would belong to a
  different forward than the one whose loss is being explained. In eval mode, or with
  ``dropout=0``, no dropout is applied, exactly as in the fused module. (With one layer
  PyTorch applies no dropout either, so that case is accepted.)
* A ``PackedSequence`` is supported: it is unpacked, each sequence's state stops changing
  after its last element (forward direction) and the reverse direction starts at each
  sequence's own last element, as in the fused kernel, and the output is packed again with
  the input's ``batch_sizes`` and ordering. The states at padded steps (t ≥ length) are
  the carried state, so their gradient is that of the last real step's state through them.
* Unbatched 2-D input ``[T, H_in]`` is run as a batch of one: ``output`` and ``h_n`` come
  back unbatched like the fused module's, but ``states`` keep the batch dimension (of
  size 1) so that per-sample norms have the same shape in both cases.
* ``nn.RNNCell``, ``nn.LSTMCell`` and ``nn.GRUCell`` need no twin: the user's loop calls
  them once per step, so their outputs are already the per-step h_t and the probe's
  ordinary forward and backward hooks see them. They are refused here with that advice.

The twin costs T small kernel launches per layer and direction instead of one fused call,
so it is meant for the steps the probe records, not for every training step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from ..errors import RecurrentInputError

__all__ = ["RecurrentInputError", "StepParams", "UnrolledResult", "unrolled_forward"]

_MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")
_CELLS = (nn.RNNCell, nn.LSTMCell, nn.GRUCell)

#: The hidden state, and the cell state for an LSTM (``None`` otherwise), both [B, …].
_State = tuple[torch.Tensor, torch.Tensor | None]


class StepParams(TypedDict):
    """A layer's (or cell's) weights by their names without the layer suffix (see
    :func:`layer_params`); a layer without biases or projection has ``None`` there."""

    weight_ih: torch.Tensor
    weight_hh: torch.Tensor
    bias_ih: torch.Tensor | None
    bias_hh: torch.Tensor | None
    weight_hr: torch.Tensor | None


@dataclass
class UnrolledResult:
    """What :func:`unrolled_forward` returns.

    ``output``, ``h_n`` and ``c_n`` have the fused module's shapes and values: ``output``
    [T, B, D·H_out] ([B, T, D·H_out] with ``batch_first``, [T, D·H_out] unbatched, or a
    ``PackedSequence`` for packed input), ``h_n`` [L·D, B, H_out], ``c_n`` [L·D, B, H] for
    an LSTM and ``None`` otherwise (both without the B dimension when unbatched). D is 2
    for a bidirectional module and 1 otherwise; H_out is ``proj_size`` when set, else
    ``hidden_size``.

    ``states[k][d][t]`` is h_t of layer k and direction d (0 forward, 1 reverse) at time t
    (time order for both directions), shape [B, H_out] (B = 1 for unbatched input), a node
    of the graph; ``cells[k][d][t]`` likewise holds the LSTM's c_t [B, H] (``None`` for
    RNN and GRU). ``gates[k][d][t]`` [B, H] is the gate that keeps the memory open: the
    LSTM's forget gate f_t or the GRU's update gate z_t (``None`` for a plain RNN).
    """

    output: torch.Tensor | PackedSequence
    h_n: torch.Tensor
    c_n: torch.Tensor | None
    states: list[list[list[torch.Tensor]]]
    cells: list[list[list[torch.Tensor]]] | None
    gates: list[list[list[torch.Tensor]]] | None = None

    def retain_state_grads(self) -> None:
        """Ask autograd to keep dL/dh_t on every state; call before ``backward()``."""
        for layer in self.states:
            for direction in layer:
                for h in direction:
                    if h.requires_grad:
                        h.retain_grad()

    def state_grad_norms(self) -> torch.Tensor:
        """[L, D, T, B] float64 per-sample norms of dL/dh_t after ``backward()``.

        float64 because vanishing gradients underflow float32 squares (see ``stats``). A
        state that received no gradient (the loss does not depend on it) counts as zero.
        """
        rows = []
        for layer in self.states:
            for direction in layer:
                for h in direction:
                    if not (h.is_leaf or h.retains_grad):
                        raise RecurrentInputError(
                            "Expected states that retain their gradients but got a state "
                            "without retain_grad(); call result.retain_state_grads() before "
                            "loss.backward()."
                        )
                    g = h.grad if h.grad is not None else torch.zeros_like(h)
                    rows.append(torch.linalg.vector_norm(g, dim=-1, dtype=torch.float64))
        n_layers, n_dirs = len(self.states), len(self.states[0])
        return torch.stack(rows).reshape(n_layers, n_dirs, len(self.states[0][0]), -1)


def _check_module(module: nn.Module) -> nn.RNNBase:
    """``module`` as the recurrent layer it must be; refuses cells, foreign modules and
    training-time dropout (see the module docstring)."""
    if isinstance(module, _CELLS):
        raise RecurrentInputError(
            f"Expected an nn.RNN, nn.LSTM or nn.GRU but got {type(module).__name__}; a cell "
            f"is called once per step by your own loop, so its outputs already are the h_t "
            f"and the probe's ordinary hooks see them: no unrolled twin is needed."
        )
    if not isinstance(module, nn.RNNBase) or getattr(module, "mode", None) not in _MODES:
        raise RecurrentInputError(
            f"Expected an nn.RNN, nn.LSTM or nn.GRU but got {type(module).__name__}; pass "
            f"the recurrent layer itself (e.g. model.rnn), not the model around it."
        )
    if module.training and module.dropout > 0 and module.num_layers > 1:
        raise RecurrentInputError(
            f"Expected a module without dropout between layers while training but got "
            f"dropout={module.dropout} in training mode; the fused kernel's dropout masks "
            f"cannot be reproduced, so call module.eval() for the unrolled pass or build "
            f"the module with dropout=0."
        )
    return module


def _as_time_major(module: nn.RNNBase, input: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """[T, B, H_in] from the user's layout, and whether the input was unbatched."""
    if input.dim() not in (2, 3):
        raise RecurrentInputError(
            f"Expected a 3-D input [T, B, H_in] ([B, T, H_in] with batch_first) or a 2-D "
            f"unbatched input [T, H_in] but got shape {tuple(input.shape)}; add or remove "
            f"the batch dimension."
        )
    if input.shape[-1] != module.input_size:
        raise RecurrentInputError(
            f"Expected input features of size input_size={module.input_size} but got "
            f"{input.shape[-1]} (input shape {tuple(input.shape)}); check the last dimension."
        )
    if input.dim() == 2:
        return input.unsqueeze(1), True
    return (input.transpose(0, 1) if module.batch_first else input), False


def _initial_states(
    module: nn.RNNBase, hx: object, batch: int, unbatched: bool, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """h_0 [L·D, B, H_out] and, for an LSTM, c_0 [L·D, B, H]; zeros when ``hx`` is None."""
    is_lstm = module.mode == "LSTM"
    n = module.num_layers * (2 if module.bidirectional else 1)
    h_out = module.proj_size or module.hidden_size
    if hx is None:
        h0 = like.new_zeros(n, batch, h_out)
        return h0, (like.new_zeros(n, batch, module.hidden_size) if is_lstm else None)
    if is_lstm:
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise RecurrentInputError(
                f"Expected hx as a tuple (h_0, c_0) for an LSTM but got "
                f"{type(hx).__name__}; pass both states or hx=None for zeros."
            )
        pairs = [("h_0", hx[0], h_out), ("c_0", hx[1], module.hidden_size)]
    else:
        if not isinstance(hx, torch.Tensor):
            raise RecurrentInputError(
                f"Expected hx as one tensor h_0 for {module.mode} but got "
                f"{type(hx).__name__}; pass h_0 or hx=None for zeros."
            )
        pairs = [("h_0", hx, h_out)]
    states = []
    for name, t, size in pairs:
        want = (n, size) if unbatched else (n, batch, size)
        if tuple(t.shape) != want:
            raise RecurrentInputError(
                f"Expected {name} of shape {list(want)} (num_layers·directions"
                f"{'' if unbatched else ', batch'}, size) but got {list(t.shape)}; match "
                f"the module's num_layers, bidirectional and the input's batch size."
            )
        states.append(t.unsqueeze(1) if unbatched else t)
    return states[0], (states[1] if is_lstm else None)


def real_steps(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """[T, B, 1] bool: True where step t is part of sequence b (t < lengths[b]), False at
    the padded steps of packed input."""
    return (torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(-1)


def layer_params(module: nn.RNNBase, layer: int, reverse: bool) -> StepParams:
    """The module's own parameters of one layer and direction (``None`` where absent)."""
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")

    def present(name: str) -> torch.Tensor:
        return getattr(module, name + sfx)

    def optional(name: str) -> torch.Tensor | None:
        return getattr(module, name + sfx, None)

    return StepParams(
        weight_ih=present("weight_ih"),
        weight_hh=present("weight_hh"),
        bias_ih=optional("bias_ih"),
        bias_hh=optional("bias_hh"),
        weight_hr=optional("weight_hr"),
    )


def cell_step(
    mode: str, gi: torch.Tensor, state: _State, p: StepParams
) -> tuple[_State, torch.Tensor | None]:
    """One time step from the precomputed input term ``gi = W_ih x_t + b_ih`` [B, G·H]:
    the new state, and the memory gate (LSTM forget, GRU update; None for an RNN).
    Raises :class:`RecurrentInputError` for an LSTM state without its cell state."""
    h, c = state
    gh = F.linear(h, p["weight_hh"], p["bias_hh"])
    if mode == "RNN_TANH":
        return (torch.tanh(gi + gh), None), None
    if mode == "RNN_RELU":
        return (torch.relu(gi + gh), None), None
    if mode == "LSTM":
        if c is None:
            raise RecurrentInputError(
                "Expected an LSTM state (h, c) but got c=None; pass the cell state too "
                "(zeros at the first step)."
            )
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        forget = torch.sigmoid(f)
        c = forget * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if p["weight_hr"] is not None:
            h = F.linear(h, p["weight_hr"])
        return (h, c), forget
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return ((1 - z) * n + z * h, None), z


def _run_direction(
    mode: str,
    x: torch.Tensor,
    state: _State,
    p: StepParams,
    reverse: bool,
    mask: torch.Tensor | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, list[torch.Tensor] | None, _State]:
    """h_t, c_t (LSTM; else None) and the memory gates (LSTM, GRU; else None) for
    t = 0…T−1 in time order, and the final state.

    ``mask`` [T, B, 1] marks real (unpadded) steps of packed input: elsewhere the state is
    carried unchanged, so the forward direction ends at each sequence's last element and
    the reverse direction starts there.
    """
    gi_all = F.linear(x, p["weight_ih"], p["bias_ih"])  # [T, B, G·H], one matmul for all t
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    hs: list[torch.Tensor] = []  # in processing order
    cs: list[torch.Tensor] = []
    gates: list[torch.Tensor] = []
    for t in steps:
        (h, c), gate = cell_step(mode, gi_all[t], state, p)
        if mask is not None:
            h = torch.where(mask[t], h, state[0])
            c_before = state[1]
            c = None if c is None or c_before is None else torch.where(mask[t], c, c_before)
        state = (h, c)
        hs.append(h)
        if c is not None:
            cs.append(c)
        if gate is not None:
            gates.append(gate)
    if reverse:  # back to time order
        for in_processing_order in (hs, cs, gates):
            in_processing_order.reverse()
    gated = mode in ("LSTM", "GRU")
    return hs, (cs if mode == "LSTM" else None), (gates if gated else None), state


def _pack_like(padded: torch.Tensor, packed: PackedSequence) -> PackedSequence:
    """Pack a time-major [T, B, F] tensor (batch in the user's order) exactly as ``packed``."""
    order = packed.sorted_indices
    if order is not None:
        padded = padded.index_select(1, order.to(padded.device))
    sizes = packed.batch_sizes.tolist()
    data = torch.cat([padded[t, :size] for t, size in enumerate(sizes)])
    return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)


def unrolled_forward(
    module: nn.Module,
    input: torch.Tensor | PackedSequence,
    hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
) -> UnrolledResult:
    """Run ``module`` (an ``nn.RNN``, ``nn.LSTM`` or ``nn.GRU``) one step at a time.

    Takes the same ``input`` and ``hx`` as ``module(input, hx)`` and returns the same
    output and final states, plus every per-step hidden state as a graph node (see
    :class:`UnrolledResult` and the module docstring). The fused module itself is not
    called, and no state of it (parameters, buffers, RNG) is changed.

    Raises :class:`RecurrentInputError` for cells, other modules, training-time dropout
    between layers, and inputs or states of the wrong shape.
    """
    rnn = _check_module(module)
    mask = None
    packed = input if isinstance(input, PackedSequence) else None
    if packed is not None:
        x, lengths = pad_packed_sequence(packed)  # [T, B, H_in], batch in the user's order
        unbatched = False
        mask = real_steps(lengths, x.shape[0]).to(x.device)
        if x.shape[-1] != rnn.input_size:
            raise RecurrentInputError(
                f"Expected input features of size input_size={rnn.input_size} but got "
                f"{x.shape[-1]}; check the packed data's last dimension."
            )
    elif isinstance(input, torch.Tensor):
        x, unbatched = _as_time_major(rnn, input)
    else:
        raise RecurrentInputError(
            f"Expected a tensor or a PackedSequence as input but got {type(input).__name__}; "
            f"pass what you pass to the module itself."
        )

    mode = rnn.mode
    n_dirs = 2 if rnn.bidirectional else 1
    h0, c0 = _initial_states(rnn, hx, x.shape[1], unbatched, x)
    states: list[list[list[torch.Tensor]]] = []
    cells: list[list[list[torch.Tensor]]] = []
    gates: list[list[list[torch.Tensor]]] = []
    h_last: list[torch.Tensor] = []
    c_last: list[torch.Tensor] = []
    layer_input = x
    for k in range(rnn.num_layers):
        outs: list[torch.Tensor] = []
        layer_states: list[list[torch.Tensor]] = []
        layer_cells: list[list[torch.Tensor]] = []
        layer_gates: list[list[torch.Tensor]] = []
        for d in range(n_dirs):
            idx = k * n_dirs + d
            start = (h0[idx], None if c0 is None else c0[idx])
            hs, cs, gs, (h, c) = _run_direction(
                mode, layer_input, start, layer_params(rnn, k, d == 1), d == 1, mask
            )
            layer_states.append(hs)
            if cs is not None:
                layer_cells.append(cs)
            if gs is not None:
                layer_gates.append(gs)
            outs.append(torch.stack(hs))
            h_last.append(h)
            if c is not None:
                c_last.append(c)
        states.append(layer_states)
        cells.append(layer_cells)
        gates.append(layer_gates)
        layer_input = torch.cat(outs, dim=-1) if n_dirs == 2 else outs[0]

    h_n = torch.stack(h_last)
    c_n = torch.stack(c_last) if c0 is not None else None
    output: torch.Tensor | PackedSequence
    if packed is not None:
        output = _pack_like(layer_input, packed)
    elif unbatched:
        output = layer_input.squeeze(1)
        h_n = h_n.squeeze(1)
        c_n = None if c_n is None else c_n.squeeze(1)
    else:
        output = layer_input.transpose(0, 1) if rnn.batch_first else layer_input
    return UnrolledResult(
        output,
        h_n,
        c_n,
        states,
        cells if mode == "LSTM" else None,
        gates if mode in ("LSTM", "GRU") else None,
    )
