"""||ds_end/ds_(end−lag)||₂ of one recorded sequence, from its states, without autograd.

The memory state s is h for ``RNN_TANH``, ``RNN_RELU`` and ``GRU``, and the cell state c
for an ``LSTM`` (total derivatives: the path c_t → h_t → step t+1 included), as in
:mod:`backprobe.probe.through_time`. Row vectors ``directions`` [k, H] start at the last
state and are carried back one step at a time by :func:`backprobe.probe.bptt.backward`.
Row i at lag ℓ is directions[i]·ds_end/ds_(end−ℓ), so the spectral norm of the k rows is
||ds_end/ds_(end−ℓ)||₂ when ``directions`` is the identity, and ||Qᵀ·J||₂ ≤ ||J||₂ for
orthonormal rows Q.

Why not autograd: the step Jacobians only need the states the recorded replay already
holds. Every gate of every step is recomputed from them in a few batched kernels, and
the recursion costs a few kernels per step with no graph — against a replay of k copies
of the sequence and a backward through its graph, about forty. (Materialising the
k-independent step Jacobians instead moves [T, H, H] floats through memory: slower at
every size tried.) The recursion runs in float64: a product of 100 Jacobians of norm 0.3
is 1e-52, below float32's range.
"""

from __future__ import annotations

import torch

from .bptt import backward, recurrence
from .recurrent import StepParams

__all__ = ["memory_decay", "spectral_norms"]


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

    def one_row(t: torch.Tensor) -> torch.Tensor:  # [T, ·] → [T, 1, ·]: one sequence
        return t.unsqueeze(1)

    v = directions.detach().to(torch.float64)
    cells = (None, None) if c_prev is None or c is None else (one_row(c_prev), one_row(c))
    rec = recurrence(mode, params, one_row(x), one_row(h_prev), one_row(h), *cells)
    rec = rec.repeated(v.shape[0])  # k rows
    # into the last cell state of an LSTM, else into the last hidden state
    grads = backward(rec, end_c=v) if mode == "LSTM" else backward(rec, end_h=v)
    return spectral_norms(grads.memory().flip(0))


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
