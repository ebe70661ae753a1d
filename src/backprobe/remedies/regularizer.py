"""Pascanu, Mikolov & Bengio's (2013) regulariser Ω, which keeps the gradient's norm
from shrinking as it travels back through time.

Eq. 9 of the paper, for the hidden states x_k of a recurrent layer and a loss E::

    Ω = Σ_k ( ‖dE/dx_{k+1} · ∂x_{k+1}/∂x_k‖ / ‖dE/dx_{k+1}‖ − 1 )²

Each term asks one step of back-propagation through time, in the direction the error
actually travels, to preserve the error's norm. dE/dx_{k+1} is held constant (detached),
as in the paper; everything else — the one-step Jacobian ∂x_{k+1}/∂x_k = diag(σ'(·)) W_rec
with σ' evaluated at the current states — is differentiated, so α·Ω's gradient pushes
W_rec (and the states' saturation) toward norm-preserving steps. Terms with
‖dE/dx_{k+1}‖² < 1e-20 are skipped (the ratio is undefined there), as in the paper.

Batches: the norms are per sample (each sample has its own Jacobian); Ω is the mean over
the batch of each sample's sum over k.

The states come from :func:`backprobe.probe.recurrent.unrolled_forward`, which runs an
``nn.RNN``/``LSTM``/``GRU`` one step at a time with the module's own parameters, so every
x_k is a node of the graph. For an LSTM the state is h (the cell state c_k is held as it
is: the Jacobian is the direct one of h_{k+1} on h_k).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from backprobe.probe.recurrent import unrolled_forward
    >>> from backprobe.remedies import pascanu_omega
    >>> _ = torch.manual_seed(0)
    >>> rnn, head = nn.RNN(2, 16), nn.Linear(16, 1)
    >>> x, y = torch.randn(30, 8, 2), torch.randn(8, 1)
    >>> result = unrolled_forward(rnn, x)
    >>> loss = nn.functional.mse_loss(head(result.output[-1]), y)
    >>> omega = pascanu_omega(loss, result)
    >>> (loss + 2.0 * omega).backward()  # α = 2, as in the paper's temporal-order runs
    >>> omega.item() > 0, rnn.weight_hh_l0.grad is not None
    (True, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import RemedyError
from ..probe.recurrent import UnrolledResult

__all__ = ["MIN_GRAD_SQ", "omega_terms", "pascanu_omega"]

#: Steps where ‖dE/dx_{k+1}‖² is below this are skipped (Pascanu et al. 2013, §3.3).
MIN_GRAD_SQ = 1e-20


def omega_terms(
    loss: torch.Tensor, states: Sequence[torch.Tensor], min_grad_sq: float = MIN_GRAD_SQ
) -> torch.Tensor:
    """The per-step, per-sample terms of Ω for one chain of states h_0 … h_{T−1}.

    Args:
        loss: the scalar E, computed from graphs that contain ``states``.
        states: [B, H] tensors, h_{k+1} computed from h_k (time order).

    Returns:
        [T−1, B]: (‖g_{k+1} ∂h_{k+1}/∂h_k‖ / ‖g_{k+1}‖ − 1)², 0 where ‖g_{k+1}‖² is below
        ``min_grad_sq``; differentiable with respect to the parameters and states.
    """
    if len(states) < 2:
        raise RemedyError(
            f"Expected at least 2 time steps for Ω (it compares consecutive states) but got "
            f"{len(states)}."
        )
    if loss.dim() != 0:
        raise RemedyError(f"Expected a scalar loss but got shape {tuple(loss.shape)}.")
    grads = torch.autograd.grad(loss, list(states[1:]), retain_graph=True, allow_unused=True)
    terms = []
    for k in range(len(states) - 1):
        g = grads[k]
        if g is None:  # E does not depend on this state
            terms.append(states[k].new_zeros(states[k].shape[0]))
            continue
        g = g.detach()  # dE/dx_{k+1}, held constant
        # g · ∂h_{k+1}/∂h_k: the input of this vector-Jacobian product is h_k itself, so
        # autograd follows only the one step between them; create_graph keeps Ω
        # differentiable in W_rec and in the states' σ'.
        (back,) = torch.autograd.grad(
            states[k + 1], states[k], g, create_graph=True, allow_unused=True
        )
        if back is None:  # h_{k+1} does not depend on h_k: the step forgets everything
            back = torch.zeros_like(g)
        g_sq = g.double().pow(2).sum(-1)
        keep = g_sq >= min_grad_sq
        ratio = back.pow(2).sum(-1).clamp_min(1e-30).sqrt() / g_sq.clamp_min(min_grad_sq).sqrt()
        terms.append(torch.where(keep, (ratio - 1.0).pow(2), torch.zeros_like(ratio)))
    return torch.stack(terms)


def pascanu_omega(
    loss: torch.Tensor,
    unrolled: UnrolledResult,
    layers: Sequence[int] | None = None,
    min_grad_sq: float = MIN_GRAD_SQ,
) -> torch.Tensor:
    """Ω (eq. 9) of an unrolled recurrent module for the loss E; add ``α · Ω`` to E.

    Args:
        loss: the scalar task loss E, computed from ``unrolled.output`` / ``h_n``.
        unrolled: what :func:`~backprobe.probe.recurrent.unrolled_forward` returned.
        layers: which stacked layers to regularise (default all); both directions of a
            bidirectional layer count.
        min_grad_sq: skip threshold on ‖dE/dx_{k+1}‖².

    Returns:
        A 0-d tensor in the loss's dtype: the batch mean of Σ_k terms, summed over layers
        and directions. Computing it costs one extra backward pass for dE/dx and one
        small double-backward per step.
    """
    if not isinstance(unrolled, UnrolledResult):
        raise RemedyError(
            f"Expected the UnrolledResult of backprobe.probe.recurrent.unrolled_forward but "
            f"got {type(unrolled).__name__}; run the recurrent layer with unrolled_forward."
        )
    chosen = range(len(unrolled.states)) if layers is None else layers
    total = loss.new_zeros(())
    for k in chosen:
        if not 0 <= k < len(unrolled.states):
            raise RemedyError(
                f"Expected layer indices in 0..{len(unrolled.states) - 1} but got {k}."
            )
        for d, chain in enumerate(unrolled.states[k]):
            # states are in time order; the reverse direction (d = 1) computed them backwards
            ordered = chain if d == 0 else chain[::-1]
            total = total + omega_terms(loss, ordered, min_grad_sq).sum(0).mean().to(total.dtype)
    return total
