"""||ds_end/ds_(end−lag)||₂ of one recorded sequence, from its states, without autograd.

The memory state s is h for ``RNN_TANH``, ``RNN_RELU`` and ``GRU``, and the cell state c
for an ``LSTM`` (total derivatives: the path c_t → h_t → step t+1 included), as in
:mod:`backprobe.probe.through_time`. Row vectors ``directions`` [k, H] start at the last
state and are carried back one step at a time by the step's vector–Jacobian product,
written out per cell from PyTorch's equations (see :mod:`backprobe.probe.recurrent`).
Row i at lag ℓ is directions[i]·ds_end/ds_(end−ℓ), so the spectral norm of the k rows is
||ds_end/ds_(end−ℓ)||₂ when ``directions`` is the identity, and ||Qᵀ·J||₂ ≤ ||J||₂ for
orthonormal rows Q.

Why not autograd: the step Jacobians only need the states the recorded replay already
holds. Every gate of every step is recomputed from them in a few batched kernels, and
the recursion costs 2 (RNN), 3 (GRU) or 5 (LSTM) kernels per step with no graph —
against a replay of k copies of the sequence and a backward through its graph, about
forty. (Materialising the k-independent step Jacobians instead moves [T, H, H] floats
through memory: slower at every size tried.) The recursion runs in
float64: a product of 100 Jacobians of norm 0.3 is 1e-52, below float32's range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["memory_decay", "spectral_norms"]

#: A layer's (or cell's) weights by their names without the layer suffix (see
#: :func:`backprobe.probe.recurrent.cell_step`).
StepParams = dict[str, torch.Tensor | None]


def memory_decay(
    mode: str,
    params: StepParams,
    x: torch.Tensor,
    h_prev: torch.Tensor,
    h: torch.Tensor,
    c_prev: torch.Tensor | None,
    c: torch.Tensor | None,
    directions: torch.Tensor,
) -> torch.Tensor:
    """[T] float64 ||ds_end/ds_(end−lag)||₂ for lag = 0…T−1 (lag 0 first).

    Steps are given in the order they were processed (a reverse direction's: t = T−1
    first): ``x`` [T, F] the step inputs; ``h_prev`` [T, H_out] and ``h`` [T, H_out] the
    hidden state before and after each step (``h_prev[s + 1] == h[s]``); for an LSTM,
    ``c_prev`` and ``c`` [T, H] likewise (``None`` otherwise). ``params`` holds the
    layer's own weights (``bias_*`` and ``weight_hr`` may be ``None``). ``directions``
    [k, H]: the rows sent back from the last state.
    """
    f64 = {k: None if v is None else v.detach().to(torch.float64) for k, v in params.items()}
    x, h_prev, h = (t.detach().to(torch.float64) for t in (x, h_prev, h))
    gi = F.linear(x, f64["weight_ih"], f64["bias_ih"])  # [T, G·H], every step at once
    gh = F.linear(h_prev, f64["weight_hh"], f64["bias_hh"])
    v = directions.detach().to(torch.float64)
    if mode == "LSTM":
        if c_prev is None or c is None:
            raise ValueError("An LSTM's decay needs its cell states c_prev and c.")
        rows = _lstm_rows(gi + gh, c_prev.detach().double(), c.detach().double(), f64, v)
    elif mode == "GRU":
        rows = _gru_rows(gi, gh, h_prev, f64["weight_hh"], v)
    else:
        pre = gi + gh
        # ReLU's slope is 0 or 1; a NaN pre-activation (a diverged state) stays NaN, so
        # that the decay says "not finite" rather than "vanished"
        relu_slope = torch.where(pre.isnan(), pre, (pre > 0).to(torch.float64))
        slope = 1 - h.square() if mode == "RNN_TANH" else relu_slope
        rows = _rnn_rows(slope, f64["weight_hh"], v)
    return spectral_norms(torch.stack(rows))


def _rnn_rows(slope: torch.Tensor, W: torch.Tensor, v: torch.Tensor) -> list[torch.Tensor]:
    """h_s = σ(pre_s): v ← (v ⊙ σ'(pre_s))·W_hh, from the last step back."""
    rows = [v]
    for slope_s in reversed(slope.unbind(0)[1:]):
        v = (v * slope_s) @ W
        rows.append(v)
    return rows


def _lstm_rows(
    pre: torch.Tensor,
    c_prev: torch.Tensor,
    c: torch.Tensor,
    p: StepParams,
    w: torch.Tensor,
) -> list[torch.Tensor]:
    """Rows of dc_end/dc_s. Back through step s, with u the row at h_s (after the
    projection W_hr, if any) and w the row at c_s from later steps:
    u' = u·W_hr; w̄ = w + u' ⊙ o ⊙ (1 − tanh² c_s), the row at c_s, recorded;
    δpre = [w̄·g·i(1−i), w̄·c_(s−1)·f(1−f), w̄·i·(1−g²), u'·tanh c_s·o(1−o)];
    u ← δpre·W_hh, w ← w̄ ⊙ f."""
    i, f, g, o = pre.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    tanh_c = torch.tanh(c)
    # [T, 4, H]: what multiplies w̄ (into i, f, g) and u' (into o), in W_hh's row order
    into_gates = torch.stack(
        [g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g.square()), tanh_c * o * (1 - o)], 1
    ).unbind(0)
    into_c = (o * (1 - tanh_c.square())).unbind(0)  # u' → c_s, through h_s
    forget = f.unbind(0)
    W, W_hr = p["weight_hh"], p["weight_hr"]
    rows = [w]  # the row at h_end is 0: no direction is sent into it
    u = torch.stack([w, w, w, torch.zeros_like(w)], 1) * into_gates[-1]
    for s in range(pre.shape[0] - 2, -1, -1):
        u = u.flatten(1) @ W  # type: ignore[operator]
        u = u @ W_hr if W_hr is not None else u
        w = torch.addcmul(w * forget[s + 1], u, into_c[s])
        rows.append(w)
        u = torch.stack([w, w, w, u], 1) * into_gates[s]
    return rows


def _gru_rows(
    gi: torch.Tensor,
    gh: torch.Tensor,
    h_prev: torch.Tensor,
    W: torch.Tensor,
    v: torch.Tensor,
) -> list[torch.Tensor]:
    """Rows of dh_end/dh_s. h_s = (1 − z) ⊙ n + z ⊙ h_(s−1), n = tanh(a_n + r ⊙ m),
    m = W_hn h_(s−1) + b_hn: v ← v ⊙ z + [v·a_r, v·a_z, v·a_n]·W_hh with
    a_r = (1−z)(1−n²)·m·r(1−r), a_z = (h_(s−1) − n)·z(1−z), a_n = (1−z)(1−n²)·r."""
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, m = gh.chunk(3, dim=-1)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * m)
    into_n = (1 - z) * (1 - n.square())
    # [T, 3, H]: what multiplies v into each gate's pre-activation, in W_hh's row order
    into_gates = torch.stack([into_n * m * r * (1 - r), (h_prev - n) * z * (1 - z), into_n * r], 1)
    rows = [v]
    for into_s, z_s in zip(
        reversed(into_gates.unbind(0)[1:]), reversed(z.unbind(0)[1:]), strict=True
    ):
        v = torch.addmm(v * z_s, (v.unsqueeze(1) * into_s).flatten(1), W)
        rows.append(v)
    return rows


def spectral_norms(jac: torch.Tensor) -> torch.Tensor:
    """[T] spectral norms of [T, k, H] matrices (k ≤ H), as √λ_max of the k × k Gram
    matrices J·Jᵀ: the largest singular value keeps its relative precision there, and a
    batch of small symmetric eigenproblems costs far less than the SVDs. A matrix holding
    NaN or inf (a diverging model) gets its largest row norm (inf or NaN) instead: the
    eigensolver refuses such input, and the training step must not fail because the
    model diverges. Its Gram matrix holds NaN or inf exactly then, so the check runs on
    [T, k, k] numbers instead of [T, k, H]."""
    gram = jac @ jac.mT
    largest_row = gram.diagonal(dim1=-2, dim2=-1).amax(dim=-1)
    finite = largest_row.isfinite() & gram.isfinite().all(dim=-1).all(dim=-1)
    safe = torch.where(finite[:, None, None], gram, torch.zeros_like(gram))
    top = torch.linalg.eigvalsh(safe)[:, -1].clamp(min=0)
    return torch.where(finite, top, largest_row).sqrt()
