"""How fast gradients can vanish or explode through time in a recurrent net: the bounds of
Hochreiter (1991) and Pascanu, Mikolov & Bengio (2013), and the exact Jacobian norms they
bound.

A plain recurrent layer (``nn.RNN``, column vectors) computes

    a_t = W_hh h_{t-1} + W_ih x_t + b,        h_t = σ(a_t),

so the chain rule gives, for k < T (Pascanu et al. 2013, eq. 5),

    dh_T/dh_k = Π_{i=T..k+1} diag(σ'(a_i)) W_hh        (leftmost factor i = T).

With γ the bound on |σ'| (1 for tanh and ReLU, 1/4 for the sigmoid) and λ1 = ||W_hh||₂
the largest singular value, every factor has spectral norm at most η = γ·λ1, so

    ||dh_T/dh_k||₂ ≤ η^(T−k).

λ1 < 1/γ (η < 1) is therefore *sufficient* for vanishing: whatever the inputs, the
gradient reaching a step q steps back shrinks at least like η^q. λ1 > 1/γ is *necessary*
for exploding, not sufficient: saturated or dead units can still make it vanish.

Transposes. Pascanu et al. print the factor as W_recᵀ diag(σ'(x_{i−1})), for the state
x_t = W_rec σ(x_{t−1}) + …; with column vectors the chain-rule factor is
W_rec diag(σ'(x_{i−1})). Transposing a whole product leaves its spectral norm unchanged,
but transposing W inside each factor does not (for a non-symmetric W it gives a different
number), so :func:`jacobian_norms` follows the chain rule for the form above, and the
tests check it against autograd. The bounds are unaffected: ||Wᵀ||₂ = ||W||₂.

Everything here is a pure function of tensors or arrays (float64 inside, plain floats and
numpy arrays out) and does not depend on the probe.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..activations import ActivationKind, ArrayFunction, activation_kind
from ..errors import TheoryInputError
from ._inputs import as_tensor

__all__ = [
    "EXPLODING",
    "GAMMA",
    "GATED",
    "NEITHER",
    "RECURRENT_ACTIVATIONS",
    "VANISHING",
    "PascanuVerdict",
    "RecurrentNonlinearity",
    "RecurrentRegime",
    "TheoryInputError",
    "activation_gamma",
    "hochreiter_bound",
    "jacobian_norms",
    "pascanu_regime",
    "recurrent_regimes",
    "spectral_norm",
]


#: The activations of a plain recurrence h_t = σ(W_hh h_(t−1) + …) that these bounds
#: cover: nn.RNN's two nonlinearities and the sigmoid.
RECURRENT_ACTIVATIONS: tuple[str, ...] = ("tanh", "sigmoid", "relu")


_RECURRENT_KINDS: tuple[ActivationKind, ...] = tuple(
    kind for name in RECURRENT_ACTIVATIONS if (kind := activation_kind(name)) is not None
)

#: γ = max over a of |σ'(a)| (from the activation table): tanh' = 1 − tanh² peaks at 1
#: (a = 0); the sigmoid's s(1 − s) peaks at 1/4 (a = 0); ReLU's derivative is 0 or 1.
GAMMA: dict[str, float] = {k.name: k.gamma for k in _RECURRENT_KINDS if k.gamma is not None}

#: σ' of each, exact to rounding also for saturated units (no 1 − tanh² cancellation);
#: ReLU's is 0 at a = 0, as torch's ReLU backward.
_DERIVATIVES: dict[str, ArrayFunction] = {
    k.name: k.exact.dphi for k in _RECURRENT_KINDS if k.exact is not None
}

#: What names an activation: "tanh", nn.Tanh(), nn.Tanh, torch.tanh, or an nn.RNN / nn.RNNCell.
RecurrentNonlinearity = str | nn.Module | type[nn.Module] | Callable[..., torch.Tensor]

#: What Pascanu's condition says about a recurrent matrix.
PascanuVerdict = Literal[
    "vanishing guaranteed", "exploding possible", "neither", "not applicable (gated)"
]
#: λ1 < 1/γ: the gradient through time shrinks at least like η^lag, whatever the inputs.
VANISHING: PascanuVerdict = "vanishing guaranteed"
#: λ1 > 1/γ: the bound allows growth; whether it happens depends on the inputs.
EXPLODING: PascanuVerdict = "exploding possible"
#: λ1 = 1/γ within a relative 1e-6: the bound η^lag = 1 decides nothing.
NEITHER: PascanuVerdict = "neither"
#: LSTM or GRU: the gradient's main path does not go through W_hh·σ' (see recurrent_regimes).
GATED: PascanuVerdict = "not applicable (gated)"

#: Relative tolerance within which λ1 counts as equal to 1/γ.
EDGE_RTOL = 1e-6

#: Gate blocks stacked along the rows of weight_hh, in PyTorch's order.
_GATES: dict[str, tuple[str, ...]] = {
    "lstm": ("input", "forget", "cell", "output"),
    "gru": ("reset", "update", "new"),
}

#: Why Pascanu's condition does not decide for a gated cell, in plain words.
_GATED_WHY = {
    "lstm": "an LSTM's memory c_t = f_t ⊙ c_(t−1) + i_t ⊙ g_t carries the gradient "
    "through the forget gate f_t, not through W_hh·σ'",
    "gru": "a GRU's state h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_(t−1) carries the gradient "
    "through the update gate z_t, not through W_hh·σ'",
}


def _activation_name(nonlinearity: RecurrentNonlinearity) -> str:
    """'tanh', 'sigmoid' or 'relu' for a name, an activation module (instance or class),
    a torch function, or an ``nn.RNN`` / ``nn.RNNCell`` (its ``nonlinearity``)."""
    if isinstance(nonlinearity, (nn.RNN, nn.RNNCell)):
        nonlinearity = nonlinearity.nonlinearity
    kind = activation_kind(nonlinearity)
    if kind is not None and kind.name in GAMMA:
        return kind.name
    shown = nonlinearity.__name__ if isinstance(nonlinearity, type) else repr(nonlinearity)
    raise TheoryInputError(
        f"Expected one of the activations {sorted(GAMMA)} (a name such as nn.RNN's "
        f"nonlinearity='tanh', an nn.Tanh / nn.Sigmoid / nn.ReLU module, torch.tanh, or an "
        f"nn.RNN) but got {shown}; for another activation compute γ = max |σ'| yourself "
        f"and pass it to hochreiter_bound(W, gamma, lags)."
    )


def activation_gamma(name_or_module: RecurrentNonlinearity) -> float:
    """γ, the bound on |σ'(a)| over all a: 1 for tanh, 1/4 for the sigmoid, 1 for ReLU.

    Accepts a name (``"tanh"``, nn.RNN's ``nonlinearity`` strings), an activation module
    or its class (``nn.Tanh()``, ``nn.Sigmoid``), ``torch.tanh`` and friends, or an
    ``nn.RNN`` / ``nn.RNNCell``. Anything else raises :class:`TheoryInputError`.
    """
    return GAMMA[_activation_name(name_or_module)]


def _float64(x: object, what: str) -> torch.Tensor:
    """``x`` (tensor, array or nested sequence) as a detached float64 tensor."""
    t = as_tensor(x, what, "e.g. rnn.weight_hh_l0")
    if t.is_complex() or t.dtype == torch.bool:
        raise TheoryInputError(f"Expected {what} with real entries but got dtype {t.dtype}.")
    return t.to(torch.float64)


def _matrix(W: object, what: str = "W", square: bool = True) -> torch.Tensor:
    """``W`` as a finite, non-empty float64 matrix [rows, cols], square if ``square``."""
    t = _float64(W, what)
    if t.dim() != 2 or t.numel() == 0:
        raise TheoryInputError(
            f"Expected {what} to be a non-empty matrix but got shape {tuple(t.shape)}; pass "
            f"the 2-D weight itself (for nn.RNN: weight_hh_l0, shape [hidden, hidden])."
        )
    if square and t.shape[0] != t.shape[1]:
        raise TheoryInputError(
            f"Expected {what} to be a square recurrent matrix [H, H] but got shape "
            f"{tuple(t.shape)}; pass the hidden-to-hidden weight (weight_hh), not weight_ih, "
            f"and for a gated cell use recurrent_regimes(module)."
        )
    if not bool(torch.isfinite(t).all()):
        raise TheoryInputError(
            f"Expected {what} to hold finite values but it contains NaN or inf; the weights "
            f"have already blown up, so look at the training run's first non-finite step."
        )
    return t


def spectral_norm(W: torch.Tensor | np.ndarray) -> float:
    """λ1, the largest singular value of the matrix ``W`` [rows, cols].

    Computed in float64 with ``torch.linalg.matrix_norm(ord=2)`` (an SVD), so it is exact
    to rounding for float32 weights too. ``W`` need not be square.
    """
    return float(torch.linalg.matrix_norm(_matrix(W, square=False), ord=2))


def _gamma_value(gamma: float | RecurrentNonlinearity) -> float:
    """γ given as a number, or as anything :func:`activation_gamma` accepts."""
    if isinstance(gamma, numbers.Real) and not isinstance(gamma, bool):
        value = float(gamma)
        if not (math.isfinite(value) and value > 0):
            raise TheoryInputError(
                f"Expected gamma, the bound on |σ'|, to be a positive finite number but got "
                f"{gamma!r}; for tanh and ReLU it is 1, for the sigmoid 0.25."
            )
        return value
    return activation_gamma(gamma)  # type: ignore[arg-type]  # numbers.Real does not narrow float


def hochreiter_bound(
    W: torch.Tensor | np.ndarray,
    gamma: float | RecurrentNonlinearity,
    lags: int | Sequence[int] | np.ndarray,
) -> np.ndarray:
    """(γ·||W||₂)^q for each lag q: a bound on ||dh_T/dh_(T−q)||₂ through a recurrence.

    ``W`` is the square recurrent matrix [H, H]; ``gamma`` a number or an activation
    (see :func:`activation_gamma`); ``lags`` non-negative integers of any shape. Returns
    float64 of the shape of ``lags`` (inf where the bound is beyond float64's range).

    Hochreiter bounds one *entry* of the Jacobian, |d e_v(t−q)/d e_u(t)| ≤
    n·(f'_max·||W||)^q, for any matrix norm compatible with a vector norm: the factor n
    (the number of units) is the price of going from such a general norm down to a single
    entry (an inner product |xᵀy| ≤ n·||x||·||y|| when max_i |x_i| ≤ ||x||). This function
    implements the per-step factor bound without n, on the whole Jacobian's spectral
    norm: each step's Jacobian diag(σ'(a)) W_hh has spectral norm ≤ γ·||W||₂, norms are
    sub-multiplicative, and with the Euclidean norm Cauchy–Schwarz needs no n. It is
    Pascanu's bound η^q; it bounds every entry too (|J_uv| ≤ ||J||₂), so it is n times
    tighter than the element-wise form, and it is the quantity :func:`jacobian_norms`
    measures, so the two compare directly.
    """
    g = _gamma_value(gamma)
    eta = g * spectral_norm(_matrix(W))
    q = np.asarray(lags)
    if not (np.issubdtype(q.dtype, np.integer) and np.all(q >= 0)):
        raise TheoryInputError(
            f"Expected lags to be non-negative integers (steps back in time) but got "
            f"{lags!r}; pass e.g. range(50) or np.arange(1, T + 1)."
        )
    with np.errstate(over="ignore", under="ignore"):
        return np.power(eta, q.astype(np.float64))


@dataclass(frozen=True)
class RecurrentRegime:
    """What Pascanu's condition says about one recurrent matrix.

    ``regime`` is :data:`VANISHING` (λ1 < 1/γ), :data:`EXPLODING` (λ1 > 1/γ),
    :data:`NEITHER` (λ1 = 1/γ within a relative 1e-6) or :data:`GATED` for an LSTM or GRU,
    where ``lambda1``, ``gamma`` and ``eta`` are None and ``gate_lambda1`` holds λ1 of each
    gate's block of W_hh instead. ``explanation`` says it in one line of plain words.
    ``weight``, ``layer`` and ``reverse`` name the parameter when the matrix was read from
    a module (``"weight_hh_l1_reverse"``, 1, True), and are None / False otherwise.
    """

    regime: PascanuVerdict
    explanation: str
    cell: str  # 'tanh', 'relu' or 'sigmoid' for a plain RNN; 'lstm' or 'gru'
    lambda1: float | None  # largest singular value of W_hh
    gamma: float | None  # bound on |σ'|
    eta: float | None  # γ·λ1: the bound on one step's gradient gain
    gate_lambda1: dict[str, float] = field(default_factory=dict)
    weight: str | None = None
    layer: int | None = None
    reverse: bool = False


def _explain(regime: PascanuVerdict, lam: float, gamma: float, eta: float) -> str:
    edge = 1.0 / gamma
    if regime == VANISHING:
        return (
            f"λ1 = {lam:.4g} < 1/γ = {edge:.4g}: each step back in time multiplies the "
            f"gradient by at most η = {eta:.4g}, so it vanishes at least as fast as η^lag "
            f"(≤ {eta**20:.2g} after 20 steps) whatever the inputs."
        )
    if regime == EXPLODING:
        return (
            f"λ1 = {lam:.4g} > 1/γ = {edge:.4g}: one step back in time can multiply the "
            f"gradient by up to η = {eta:.4g}, so it may explode (not certain: saturated or "
            f"dead units can still make it vanish)."
        )
    return (
        f"λ1 = {lam:.4g} ≈ 1/γ = {edge:.4g}: on the edge (η = 1), the bound neither forces "
        f"the gradient to vanish nor lets it grow; the inputs decide."
    )


def regime_of(lambda1: float, gamma: float) -> PascanuVerdict:
    """Pascanu's condition from λ1 of W_hh and γ = max |σ'|: λ1 < 1/γ guarantees
    vanishing, λ1 > 1/γ makes exploding possible, equality (relative 1e-6) is neither."""
    edge = 1.0 / gamma
    if math.isclose(lambda1, edge, rel_tol=EDGE_RTOL):
        return NEITHER
    return VANISHING if lambda1 < edge else EXPLODING


def pascanu_regime(
    W_hh: torch.Tensor | np.ndarray, nonlinearity: RecurrentNonlinearity
) -> RecurrentRegime:
    """Pascanu's condition for the plain recurrence h_t = σ(W_hh h_(t−1) + W_ih x_t + b).

    ``W_hh`` is the square recurrent matrix [H, H]; ``nonlinearity`` is σ (see
    :func:`activation_gamma`). λ1 < 1/γ guarantees vanishing, λ1 > 1/γ makes exploding
    possible, equality (relative 1e-6) is neither.
    """
    name = _activation_name(nonlinearity)
    gamma = GAMMA[name]
    lam = spectral_norm(_matrix(W_hh, "W_hh"))
    eta = gamma * lam
    regime = regime_of(lam, gamma)
    return RecurrentRegime(
        regime=regime,
        explanation=_explain(regime, lam, gamma, eta),
        cell=name,
        lambda1=lam,
        gamma=gamma,
        eta=eta,
    )


def _gated_regime(W_hh: torch.Tensor, cell: str, hidden_size: int) -> RecurrentRegime:
    """λ1 of each gate's block of a gated cell's stacked W_hh [gates·H, H or proj]."""
    gates = _GATES[cell]
    W = _matrix(W_hh, "weight_hh", square=False)
    if W.shape[0] != len(gates) * hidden_size:
        raise TheoryInputError(
            f"Expected a {cell.upper()} weight_hh with {len(gates)}·{hidden_size} rows (its "
            f"gates stacked) but got shape {tuple(W.shape)}."
        )
    blocks = torch.split(W, hidden_size, dim=0)
    per_gate = {g: spectral_norm(b) for g, b in zip(gates, blocks, strict=True)}
    listed = ", ".join(f"{g} {v:.3g}" for g, v in per_gate.items())
    return RecurrentRegime(
        regime=GATED,
        explanation=(
            f"Pascanu's λ1 < 1/γ test does not apply: {_GATED_WHY[cell]}. λ1 of W_hh per "
            f"gate: {listed}."
        ),
        cell=cell,
        lambda1=None,
        gamma=None,
        eta=None,
        gate_lambda1=per_gate,
    )


def _cell_kind(module: nn.Module) -> str:
    """'tanh', 'relu', 'lstm' or 'gru' for PyTorch's recurrent layers and cells."""
    if isinstance(module, nn.RNNBase):
        kinds = {"RNN_TANH": "tanh", "RNN_RELU": "relu", "LSTM": "lstm", "GRU": "gru"}
        if module.mode in kinds:
            return kinds[module.mode]
    elif isinstance(module, nn.RNNCell):
        return _activation_name(module.nonlinearity)
    elif isinstance(module, nn.LSTMCell):
        return "lstm"
    elif isinstance(module, nn.GRUCell):
        return "gru"
    raise TheoryInputError(
        f"Expected nn.RNN, nn.LSTM, nn.GRU or one of their cells but got "
        f"{type(module).__name__}; for a custom recurrence call "
        f"pascanu_regime(W_hh, nonlinearity) with its recurrent matrix."
    )


def recurrent_regimes(module: nn.Module) -> list[RecurrentRegime]:
    """One :class:`RecurrentRegime` per layer and direction of a PyTorch recurrent module.

    Reads ``weight_hh_l{k}`` and ``weight_hh_l{k}_reverse`` (``weight_hh`` for a cell), in
    PyTorch's order: layer 0 forward, layer 0 reverse, layer 1 forward, … . Each regime is
    about the recurrence through time inside that layer; the gradient also reaches lower
    layers through ``weight_ih``, which is not part of this condition.

    For ``nn.RNN`` (tanh or ReLU) Pascanu's condition applies as in :func:`pascanu_regime`.
    For LSTM and GRU it does not: their W_hh stacks the gates' matrices, and the memory
    path that carries the gradient over long lags goes through the forget gate (LSTM) or
    the update gate (GRU), elementwise, not through W_hh·σ'; a gate near 1 keeps the
    gradient alive even when every block of W_hh is small. Their regime is :data:`GATED`,
    with λ1 of each gate block reported (LSTM: input, forget, cell, output; GRU: reset,
    update, new — PyTorch's stacking order).
    """
    cell = _cell_kind(module)
    if isinstance(module, nn.RNNCellBase):
        places = [("weight_hh", 0, False)]
        hidden_size = module.hidden_size
    elif isinstance(module, nn.RNNBase):  # the only other kind _cell_kind lets through
        hidden_size = module.hidden_size
        directions = (False, True) if module.bidirectional else (False,)
        places = [
            (f"weight_hh_l{k}{'_reverse' if rev else ''}", k, rev)
            for k in range(module.num_layers)
            for rev in directions
        ]
    regimes = []
    for name, layer, reverse in places:
        W = getattr(module, name)
        regime = _gated_regime(W, cell, hidden_size) if cell in _GATES else pascanu_regime(W, cell)
        regimes.append(replace(regime, weight=name, layer=layer, reverse=reverse))
    return regimes


def jacobian_norms(
    W_hh: torch.Tensor | np.ndarray,
    pre_activations: torch.Tensor | np.ndarray,
    nonlinearity: RecurrentNonlinearity,
) -> np.ndarray:
    """||dh_T/dh_(T−q)||₂ for q = 0..T: the exact gradient gain over each lag of one
    sequence through the plain recurrence h_t = σ(a_t), a_t = W_hh h_(t−1) + W_ih x_t + b.

    ``W_hh`` is the recurrent matrix [H, H]; ``pre_activations`` [T, H] holds a_1 … a_T of
    one sequence (row t − 1 is the a_t that produced h_t from h_(t−1)); ``nonlinearity`` is
    σ (see :func:`activation_gamma`). Returns float64 [T + 1], indexed by lag: entry 0 is
    1 (dh_T/dh_T = I) and entry T is the gain back to the initial state h_0, matching
    ``hochreiter_bound(W_hh, nonlinearity, range(T + 1))`` entry by entry.

    The product dh_T/dh_k = Π_{i=T..k+1} diag(σ'(a_i)) W_hh is formed by explicit float64
    matrix products, with one SVD per lag: O(T·H³), meant for small H. The running
    product is rescaled to unit norm after each step and its scale kept as mantissa and
    binary exponent, so long products neither overflow nor underflow on the way (one
    rounding per step); only the returned norms can be inf or 0, where they lie beyond
    float64's range.
    """
    name = _activation_name(nonlinearity)
    W = _matrix(W_hh, "W_hh").cpu().numpy()
    a = _float64(pre_activations, "pre_activations").cpu().numpy()
    H = W.shape[0]
    if a.ndim != 2 or a.shape[1] != H:
        raise TheoryInputError(
            f"Expected pre_activations of one sequence, shape [T, {H}] for this W_hh, but "
            f"got shape {a.shape}; for a batch [T, B, H] pass one sequence, a[:, b]."
        )
    if not np.isfinite(a).all():
        raise TheoryInputError(
            "Expected finite pre_activations but they contain NaN or inf; the forward pass "
            "already overflowed at these steps."
        )
    T = a.shape[0]
    slopes = _DERIVATIVES[name](a)  # [T, H]: σ'(a_t)
    # ||dh_T/dh_(T−q)||₂ = mantissa[q] · 2^exponent[q], kept apart so that no step overflows
    mantissa = np.zeros(T + 1)
    exponent = np.zeros(T + 1, dtype=np.int64)
    mantissa[0] = 1.0
    product = np.eye(H)  # dh_T/dh_(T−q), divided by its norm
    for q in range(1, T + 1):
        # dh_T/dh_(T−q) = dh_T/dh_(T−q+1) · diag(σ'(a_(T−q+1))) W_hh; row T − q holds a_(T−q+1)
        product = product @ (slopes[T - q][:, None] * W)
        size = float(np.linalg.norm(product, 2))
        if size == 0.0:
            break  # every later product is zero too (e.g. all ReLU units off at a step)
        product /= size
        m, e = math.frexp(mantissa[q - 1] * size)
        mantissa[q], exponent[q] = m, exponent[q - 1] + e
    with np.errstate(over="ignore", under="ignore"):
        return np.ldexp(mantissa, exponent)
