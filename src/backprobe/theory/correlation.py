"""How two inputs' correlation travels through a wide random network: the c-map and its
depth scale ξ_c (Poole et al. 2016; Schoenholz et al. 2017).

Two inputs whose pre-activations have variance q* (the q-map's fixed point,
:func:`~backprobe.theory.meanfield.fixed_point_q`) and correlation c in one layer have,
in the next, correlation::

    C(c) = (σ_w² E[φ(u1) φ(u2)] + σ_b²) / q*,
    u1 = √q* z1,  u2 = √q* (c z1 + √(1 − c²) z2),  z1, z2 ~ N(0, 1) independent.

c = 1 is always a fixed point. In the ordered phase (χ1 < 1) it is the stable one; in the
chaotic phase (χ1 > 1) the map settles at a c* < 1 instead. The slope of the map there,

    χ_c = C'(c*) = σ_w² E[φ'(u1) φ'(u2)]  (at c = c*),

says how fast the correlation forgets where it started: |c^l − c*| shrinks by χ_c per
layer, so by a factor e every ``ξ_c = −1/ln χ_c`` layers. At c* = 1, χ_c is χ1 and ξ_c is
the gradient's depth scale ξ = −1/ln χ1. Schoenholz et al. found networks to train up to
about 6ξ_c layers in both phases; in the chaotic phase ξ_c, not 1/ln χ1, is that scale
(tanh, σ_w² = 4, σ_b² = 0.05: 6ξ_c = 41.9 layers, where 6/ln χ1 gives 20.4).

Gaussian expectations over (z1, z2) use the tensor product of the mean-field module's
split Gauss–Legendre rule (a few hundred nodes per axis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import FixedPointError, TheoryInputError
from .meanfield import (
    ActivationLike,
    MeanFieldActivation,
    _check_sigmas,
    _normal_rule,
    chi1,
    fixed_point_q,
    resolve_activation,
)

__all__ = ["CorrelationDepth", "c_map", "correlation_depth"]

#: The c-map's iteration stops when a step is below this.
_C_TOL = 1e-13
#: Most c-map iterations :func:`correlation_depth` takes (|c − c*| shrinks by χ_c < 1 per
#: iteration, and Newton's steps finish the convergence).
_C_MAX_ITER = 2000


def _pair_expectations(act: MeanFieldActivation, q: float, c: float) -> tuple[float, float]:
    """(E[φ(u1) φ(u2)], E[φ'(u1) φ'(u2)]) for the pair (u1, u2) of variance q and
    correlation c, by the product of two split Gauss–Legendre rules."""
    z, w = _normal_rule(q)
    s = math.sqrt(q)
    u1 = s * z[:, None]  # [n, 1]
    u2 = s * (c * z[:, None] + math.sqrt(max(0.0, 1.0 - c * c)) * z[None, :])  # [n, n]
    weights = w[:, None] * w[None, :]
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        both = float(np.sum(weights * act.phi(u1) * act.phi(u2)))
        slopes = float(np.sum(weights * act.dphi(u1) * act.dphi(u2)))
    return both, slopes


def _finite_q_star(act: MeanFieldActivation, sigma_w: float, sigma_b: float) -> float:
    q_star = fixed_point_q(act, sigma_w, sigma_b)
    if not (0.0 < q_star < math.inf):
        raise TheoryInputError(
            f"Expected a finite, non-zero fixed point q* for {act.name} at σ_w = "
            f"{sigma_w:g}, σ_b = {sigma_b:g}, but got q* = {q_star!r}; the correlation map "
            f"needs signals that neither die nor grow without bound: pick a bounded "
            f"activation or σ_w, σ_b in its ordered phase"
        )
    return q_star


def c_map(c: float, activation: ActivationLike, sigma_w: float, sigma_b: float) -> float:
    """C(c): the next layer's correlation of two inputs whose pre-activations have the
    fixed-point variance q* and correlation ``c`` in [−1, 1] here.

    Raises:
        TheoryInputError: ``c`` outside [−1, 1], or no finite non-zero q*.
    """
    act = resolve_activation(activation)
    sigma_w, sigma_b = _check_sigmas(sigma_w, sigma_b)
    if not -1.0 <= c <= 1.0:
        raise TheoryInputError(
            f"Expected a correlation c in [-1, 1], but got {c!r}; pass e.g. c=0.5"
        )
    q_star = _finite_q_star(act, sigma_w, sigma_b)
    both, _ = _pair_expectations(act, q_star, c)
    return (sigma_w * sigma_w * both + sigma_b * sigma_b) / q_star


@dataclass(frozen=True)
class CorrelationDepth:
    """The correlation map's stable fixed point ``c_star``, its slope there ``chi_c``
    and ``depth`` ξ_c = −1/ln χ_c layers (``inf`` at χ_c = 1, the edge of chaos)."""

    c_star: float
    chi_c: float
    depth: float

    @property
    def trainable_depth(self) -> float:
        """6ξ_c: how deep Schoenholz et al. found such networks to train."""
        return 6.0 * self.depth


def correlation_depth(
    activation: ActivationLike, sigma_w: float, sigma_b: float, c0: float = 0.0
) -> CorrelationDepth:
    """c*, χ_c and ξ_c for weights N(0, σ_w²/N) and biases N(0, σ_b²).

    In the ordered phase and at the edge (χ1 ≤ 1) c* = 1 and χ_c = χ1. In the chaotic
    phase the c-map is iterated from ``c0`` and finished by Newton's method on C(c) − c
    with the map's exact slope.

    Raises:
        TheoryInputError: no finite non-zero q* (ReLU or linear in their chaotic phase).
        FixedPointError: the c-map does not settle within 2000 iterations.
    """
    act = resolve_activation(activation)
    sigma_w, sigma_b = _check_sigmas(sigma_w, sigma_b)
    q_star = _finite_q_star(act, sigma_w, sigma_b)
    chi = chi1(act, sigma_w, sigma_b, q_star=q_star)
    if chi <= 1.0:
        return CorrelationDepth(1.0, chi, _depth(chi))
    s2, b2 = sigma_w * sigma_w, sigma_b * sigma_b
    c = float(c0)
    for _ in range(_C_MAX_ITER):
        both, slopes = _pair_expectations(act, q_star, c)
        mapped, slope = (s2 * both + b2) / q_star, s2 * slopes
        step = mapped - c
        if slope < 1.0:  # Newton's step toward the stable fixed point, kept below 1
            newton = c + step / (1.0 - slope)
            step = newton - c if -1.0 <= newton < 1.0 else step
        c = min(c + step, 1.0)
        if abs(step) < _C_TOL:
            _, slopes = _pair_expectations(act, q_star, c)
            chi_c = s2 * slopes
            return CorrelationDepth(c, chi_c, _depth(chi_c))
    raise FixedPointError(
        f"Expected the correlation map of {act.name} at σ_w = {sigma_w:g}, σ_b = "
        f"{sigma_b:g} to settle within {_C_MAX_ITER} iterations, but c is still moving at "
        f"c = {c:.6g}; this is a marginal point: move σ_w or σ_b"
    )


def _depth(chi_c: float) -> float:
    """−1/ln χ_c for 0 ≤ χ_c ≤ 1: ``inf`` at 1, 0 at 0."""
    if chi_c >= 1.0:
        return math.inf
    if chi_c <= 0.0:
        return 0.0
    return -1.0 / math.log(chi_c)
