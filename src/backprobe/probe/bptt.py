"""Back-propagation through time of one recurrence, written out, for many rows at once.

A *row* is one gradient carried back through a layer's time steps: the gradient of the
loss for one sequence of the recorded batch (what ``FusedWatch`` measures as
||dL/dh_t||), or one direction v sent back from the last state of a sequence (row i of
v·ds_end/ds_t, what the memory decay measures). Every row obeys the same recursion, only
its injections differ, so all of them go back together: the loop costs the same few
kernels per step whether it carries 8 rows or 24, and the forward states it needs are
the replay's, with no autograd graph.

Steps are in processing order (a reverse direction's first step is t = T−1) and rows
along dimension 1: [T, R, ·], in the dtype asked of :func:`recurrence`: float64 for the
decay, since a product of 100 Jacobians of norm 0.3 is 1e-52, below float32's range; the
model's own for the loss's gradient, as autograd would compute it. :func:`recurrence`
turns the forward states into the per-step factors of the recursion (PyTorch's
equations, see :mod:`backprobe.probe.recurrent`), and :func:`backward` runs it. For the
LSTM, with u the row at h_s (after the projection W_hr, if any) and w the row at c_s:

    w  = w_(s+1) ⊙ f_(s+1) + u ⊙ o ⊙ (1 − tanh² c_s)
    δpre_s = [w·g·i(1−i), w·c_(s−1)·f(1−f), w·i·(1−g²), u·tanh c_s·o(1−o)]
    row at h_(s−1) = δpre_s·W_hh + what is injected there

the GRU's and the RNN's likewise (their factors are in :func:`recurrence`). Packed
sequences: at a padded step the state is carried unchanged, so the row passes through
it untouched (factor 1 on the carried path, 0 into the cell).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .recurrent import StepParams

__all__ = ["Gradients", "Recurrence", "backward", "recurrence"]


@dataclass(frozen=True)
class Recurrence:
    """One layer and direction as its backward pass needs it: float64, [T, R, ·] per step
    (processing order) and row.

    ``into_gates`` [T, R, G·H] multiplies the row(s) — for the LSTM [w, w, w, u], for the
    GRU [v, v, v], for the RNN v — into the gradient of the gate pre-activations on the
    W_hh side (zero at padded steps). ``keep_h`` [T, R, H_out]: what passes from the row
    at h_s straight to h_(s−1) (the GRU's z; 1 at padded steps; None when nothing does).
    LSTM only: ``into_c`` [T, R, H], from u to w at step s, and ``keep_c`` [T, R, H],
    from w at step s to w at step s−1 (f; 1 at padded steps). GRU only: ``into_input``
    [T, R, 3H], like ``into_gates`` but on the input side, where the candidate's gradient
    is not multiplied by r.
    """

    mode: str
    weight_ih: torch.Tensor
    weight_hh: torch.Tensor
    weight_hr: torch.Tensor | None
    into_gates: torch.Tensor
    keep_h: torch.Tensor | None
    into_c: torch.Tensor | None = None
    keep_c: torch.Tensor | None = None
    into_input: torch.Tensor | None = None

    def repeated(self, k: int) -> Recurrence:
        """The recurrence of one row (R = 1) as k rows (views, no copies)."""
        expanded = {}
        for f in fields(self):
            value = getattr(self, f.name)
            is_factor = isinstance(value, torch.Tensor) and value.dim() == 3
            expanded[f.name] = value.expand(-1, k, -1) if is_factor else value
        return Recurrence(**expanded)


def recurrence(
    mode: str,
    params: StepParams,
    x: torch.Tensor,
    h_prev: torch.Tensor,
    h: torch.Tensor,
    c_prev: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
    real: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> Recurrence:
    """The factors of one layer and direction from its forward, in processing order:
    inputs ``x`` [T, R, F]; hidden states before and after each step ``h_prev`` and ``h``
    [T, R, H_out]; for an LSTM the cell states ``c_prev`` and ``c`` [T, R, H]; ``real``
    [T, R, 1] bool, False at the padded steps of packed sequences (None: all real).
    ``params``: the layer's own weights (``bias_*`` and ``weight_hr`` may be None). The
    factors are computed and returned in ``dtype``."""

    def fixed(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(dtype)

    def fixed_or_none(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else fixed(t)

    w_ih, w_hh = fixed(params["weight_ih"]), fixed(params["weight_hh"])
    x, h_prev, h = fixed(x), fixed(h_prev), fixed(h)
    gi = F.linear(x, w_ih, fixed_or_none(params["bias_ih"]))  # [T, R, G·H], every step at once
    gh = F.linear(h_prev, w_hh, fixed_or_none(params["bias_hh"]))
    mask = None if real is None else real.to(dtype)
    passes = None if mask is None else 1 - mask  # the carried path at padded steps

    def masked(t: torch.Tensor) -> torch.Tensor:
        return t if mask is None else t * mask

    def carried(kept: torch.Tensor) -> torch.Tensor:
        """``kept`` at real steps, 1 (the carried path) at padded ones."""
        return kept if mask is None else kept * mask + (1 - mask)

    if mode == "LSTM":
        if c_prev is None or c is None:
            raise ValueError("An LSTM's backward needs its cell states c_prev and c.")
        c_prev, c = c_prev.detach().to(dtype), c.detach().to(dtype)
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        tanh_c = torch.tanh(c)
        gates = torch.cat(
            [g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g.square()), tanh_c * o * (1 - o)],
            dim=-1,
        )
        return Recurrence(
            mode,
            w_ih,
            w_hh,
            weight_hr=fixed_or_none(params["weight_hr"]),
            into_gates=masked(gates),
            keep_h=passes,
            into_c=masked(o * (1 - tanh_c.square())),
            keep_c=carried(f),
        )
    if mode == "GRU":
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, m = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * m)
        into_n = (1 - z) * (1 - n.square())
        into_r, into_z = into_n * m * r * (1 - r), (h_prev - n) * z * (1 - z)
        return Recurrence(
            mode,
            w_ih,
            w_hh,
            weight_hr=None,
            into_gates=masked(torch.cat([into_r, into_z, into_n * r], dim=-1)),
            keep_h=carried(z),
            into_input=masked(torch.cat([into_r, into_z, into_n], dim=-1)),
        )
    pre = gi + gh
    if mode == "RNN_TANH":
        slope = 1 - h.square()
    else:  # ReLU: 0 or 1; a NaN pre-activation (a diverged state) stays NaN, so that
        # the result says "not finite" rather than "vanished"
        slope = torch.where(pre.isnan(), pre, (pre > 0).to(dtype))
    return Recurrence(mode, w_ih, w_hh, weight_hr=None, into_gates=masked(slope), keep_h=passes)


@dataclass(frozen=True)
class Gradients:
    """What :func:`backward` returns, in processing order: ``h`` [T, R, H_out] the rows at
    h_s (the total gradient there), ``c`` [T, R, H] at an LSTM's c_s (None otherwise), and
    ``gates`` the rows [R, G·H] of each step's gate pre-activations on the W_hh side."""

    h: torch.Tensor
    c: torch.Tensor | None
    gates: list[torch.Tensor]

    def inputs(self, rec: Recurrence) -> torch.Tensor:
        """[T, R, F] the rows at the layer's inputs x_s: the gradient that the layer
        below receives at its output."""
        if rec.into_input is not None:  # GRU: the candidate's input term is not gated by r
            into = torch.cat([self.h] * 3, dim=-1) * rec.into_input
        else:
            into = torch.stack(self.gates)
        return into @ rec.weight_ih

    def memory(self) -> torch.Tensor:
        """[T, R, ·] the rows at the memory state: an LSTM's c_s, else h_s."""
        return self.h if self.c is None else self.c


def backward(
    rec: Recurrence,
    inject_h: torch.Tensor | None = None,
    end_h: torch.Tensor | None = None,
    end_c: torch.Tensor | None = None,
) -> Gradients:
    """Carry every row back through the steps of ``rec``.

    ``inject_h`` [T, R, H_out]: what each row receives at h_s from outside the recurrence
    (the gradient at the layer's output); ``end_h`` [R, H_out] and ``end_c`` [R, H]:
    what it receives at the last step's h and c (the gradient at h_n and c_n, or the
    directions of a decay). Absent ones are zero.
    """
    R = rec.into_gates.shape[1]
    W, W_hr = rec.weight_hh, rec.weight_hr
    # per-step views, unbound once: an index in the loop would cost a call per step
    into_gates = rec.into_gates.unbind(0)
    inject, keep_h, keep_c, into_c = (
        None if t is None else t.unbind(0) for t in (inject_h, rec.keep_h, rec.keep_c, rec.into_c)
    )
    last = len(into_gates) - 1
    dh = W.new_zeros(R, W.shape[1])
    for extra in (end_h, None if inject is None else inject[last]):
        dh = dh if extra is None else dh + extra
    if into_c is not None:
        dc = W.new_zeros(R, into_c[0].shape[-1])
        dc = dc if end_c is None else dc + end_c
    hs: list[torch.Tensor] = []  # from the last step back
    cs: list[torch.Tensor] = []
    gates: list[torch.Tensor] = []
    for s in range(last, -1, -1):
        if s < last:
            below = gates[-1]  # the step after s, in time
            dh = below @ W if inject is None else torch.addmm(inject[s], below, W)
            if keep_h is not None:
                dh = torch.addcmul(dh, hs[-1], keep_h[s + 1])
        if into_c is not None:  # LSTM
            u = dh @ W_hr if W_hr is not None else dh
            if s < last and keep_c is not None:
                dc = dc * keep_c[s + 1]
            dc = torch.addcmul(dc, u, into_c[s])
            gate = torch.cat([dc, dc, dc, u], dim=-1) * into_gates[s]
            cs.append(dc)
        elif rec.mode == "GRU":
            gate = torch.cat([dh, dh, dh], dim=-1) * into_gates[s]
        else:
            gate = dh * into_gates[s]
        hs.append(dh)
        gates.append(gate)
    return Gradients(torch.stack(hs[::-1]), torch.stack(cs[::-1]) if cs else None, gates[::-1])
