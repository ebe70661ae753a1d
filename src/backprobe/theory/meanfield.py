"""Mean-field theory of signal propagation: why a deep network's gradients vanish or explode.

For a fully connected network ``h^l = W^l φ(h^{l-1}) + b^l`` with weights
``W^l_ij ~ N(0, σ_w²/N)`` and biases ``b^l_i ~ N(0, σ_b²)``, every pre-activation of a wide
random network is Gaussian with a variance ``q^l`` that follows the *q-map*
(Poole et al. 2016; Schoenholz et al. 2017)::

    q^l = σ_w² E[φ(√q^{l-1} z)²] + σ_b²,      z ~ N(0, 1),

and settles at a fixed point ``q*``. At that fixed point, one layer of back-propagation
multiplies the mean square of the gradient with respect to the pre-activations by::

    χ1 = σ_w² E[φ'(√q* z)²].

χ1 < 1: gradients vanish toward the input (the *ordered* phase); χ1 > 1: they explode
(the *chaotic* phase); χ1 = 1: the *edge of chaos*. Across L layers the ratio is χ1^L,
so the gradient's mean square changes by a factor e every ``ξ = 1/|ln χ1|`` layers, and
networks train up to roughly 6ξ layers.

Everything here is a pure function of numbers computed in numpy float64: floats in,
floats out; torch computes only a torch function passed as the activation. Activations
come from the activation table (:mod:`backprobe.activations`). ``sigma_w``
and ``sigma_b`` are *standard deviations*; the papers' axes are often the variances σ_w²
and σ_b² (tanh with σ_b² = 0.05 is critical near σ_w² ≈ 1.76, that is
``sigma_w ≈ 1.327``).

Gaussian expectations use a composite Gauss–Legendre rule split at z = 0 (see
:func:`gaussian_expectation` for why not plain Gauss–Hermite), and closed forms for the
positively homogeneous activations (ReLU, linear).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
import torch
from numpy.polynomial.hermite_e import hermegauss
from numpy.polynomial.legendre import leggauss

from ..activations import ACTIVATION_KINDS, ActivationKind, ArrayFunction, activation_kind
from ..errors import FixedPointError, TheoryInputError

#: χ1 within this distance of 1 counts as critical: the gradient then changes by less
#: than a factor e over 1000 layers, deeper than anything one trains.
CRITICAL_TOL = 1e-3

#: Networks train up to about this many depth scales (Schoenholz et al. 2017, empirical).
TRAINABLE_DEPTH_FACTOR = 6.0


# --------------------------------------------------------------------------- activations


@dataclass(frozen=True)
class MeanFieldActivation:
    """An activation φ and its derivative φ', both element-wise on float64 arrays.

    ``homogeneous`` is ``(E[φ(z)²], E[φ'(z)²])`` for a positively homogeneous φ
    (φ(c·x) = c·φ(x) for c > 0, as ReLU and linear), whose Gaussian expectations are
    then exact: E[φ(√q z)²] = q·E[φ(z)²] and E[φ'(√q z)²] = E[φ'(z)²] for every q.
    """

    name: str
    phi: ArrayFunction
    dphi: ArrayFunction
    homogeneous: tuple[float, float] | None = None


#: Activations by name: those of the activation table with exact float64 forms.
ACTIVATIONS: dict[str, MeanFieldActivation] = {
    kind.name: MeanFieldActivation(kind.name, form.phi, form.dphi, form.homogeneous)
    for kind in ACTIVATION_KINDS
    if (form := kind.exact) is not None
}


def activation_names() -> tuple[str, ...]:
    """Every name :func:`resolve_activation` accepts, aliases included, sorted."""
    return tuple(
        sorted(
            key
            for kind in ACTIVATION_KINDS
            if kind.exact is not None
            for key in (kind.name, *kind.aliases)
        )
    )


#: What the functions of this module accept as an activation: a name, a
#: :class:`MeanFieldActivation`, a pair of functions ``(φ, φ')``, or a torch activation
#: module or function (see :func:`resolve_activation`).
ActivationLike = str | MeanFieldActivation | tuple[Callable, Callable] | Callable


def resolve_activation(activation: ActivationLike) -> MeanFieldActivation:
    """The :class:`MeanFieldActivation` for a name (case-insensitive), a
    MeanFieldActivation, a pair ``(φ, φ')``, or an activation module or function the
    activation table knows (``nn.Tanh()``, ``nn.GELU``, Hugging Face's ``GELUActivation``,
    ``torch.tanh``, ``F.silu``; default arguments only: ELU's α = 1, Softplus's β = 1,
    exact GELU).

    The functions of a pair must be element-wise; numpy functions are used as they are,
    torch functions (``torch.tanh``) are wrapped to take and return float64 arrays. Each
    is checked once on a few points, so that a wrong function fails here and not inside
    a quadrature.
    """
    if isinstance(activation, MeanFieldActivation):
        return activation
    if isinstance(activation, str):
        kind = activation_kind(activation)
        if kind is None or kind.exact is None:
            raise TheoryInputError(
                f"Expected an activation name, one of {', '.join(activation_names())}, but "
                f"got {activation!r}; use one of these or pass a pair (phi, dphi) of functions"
            )
        return ACTIVATIONS[kind.name]
    if (
        isinstance(activation, tuple | list)
        and len(activation) == 2
        and all(callable(f) for f in activation)
    ):
        phi, dphi = activation
        name = getattr(phi, "__name__", None) or type(phi).__name__
        return MeanFieldActivation(
            name, _as_array_function(phi, "phi"), _as_array_function(dphi, "dphi")
        )
    kind = activation_kind(activation)
    if kind is not None and kind.exact is not None:
        _check_defaults(activation, kind)
        return ACTIVATIONS[kind.name]
    raise TheoryInputError(
        f"Expected an activation name, a MeanFieldActivation, or a pair (phi, dphi) of "
        f"functions, but got {activation!r}; pass e.g. 'tanh' or "
        f"(np.tanh, lambda x: 1 - np.tanh(x)**2)"
    )


def _check_defaults(activation: object, kind: ActivationKind) -> None:
    """Refuse a module configured unlike the table's exact forms (``nn.ELU(alpha=0.5)``)."""
    if isinstance(activation, type):
        return
    for attr, default in kind.defaults:
        value = getattr(activation, attr, default)
        if value != default:
            raise TheoryInputError(
                f"Expected {type(activation).__name__} with {attr}={default!r}, the form "
                f"mean-field functions know, but got {attr}={value!r}; pass a pair "
                f"(phi, dphi) of functions for this variant"
            )


def _as_array_function(f: Callable, role: str) -> ArrayFunction:
    """``f`` as a float64-array function: torch functions are wrapped, then checked."""
    probe = np.array([-3.0, -0.5, 0.0, 0.5, 3.0])
    func: ArrayFunction = f
    numpy_error: Exception | None = None
    try:
        out = f(probe)
    except Exception as exc:  # torch.tanh and tensor methods refuse numpy arrays
        out, numpy_error = None, exc
    if out is None or type(out).__module__.startswith("torch"):
        func = _torch_wrapped(f)
        try:
            out = func(probe)
        except Exception as exc:
            first = numpy_error or exc
            raise TheoryInputError(
                f"Expected {role} to accept a float64 numpy array or torch tensor, but calling "
                f"it failed with {type(first).__name__}: {first}; pass an element-wise function"
            ) from exc
    out = np.asarray(out, dtype=np.float64)
    if out.shape != probe.shape or not np.all(np.isfinite(out)):
        raise TheoryInputError(
            f"Expected {role} to be element-wise and finite on {probe.tolist()}, but got "
            f"{out.tolist()}; pass a function that maps an array to an array of its shape"
        )
    return func


def _torch_wrapped(f: Callable) -> ArrayFunction:
    """A float64-array function computing ``f`` on a torch tensor."""

    def wrapped(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
        with torch.no_grad():
            return f(t).detach().cpu().numpy().astype(np.float64)

    return wrapped


# ---------------------------------------------------------------------------- quadrature

#: The default rule integrates over |z| ≤ Z_MAX; the Gaussian mass beyond is below 1e-38,
#: so integrands growing polynomially lose nothing measurable.
Z_MAX = 13.0
#: Gauss–Legendre nodes per panel of the default rule.
PANEL_NODES = 24
#: Most Gauss–Hermite nodes :func:`gaussian_expectation` takes: numpy's ``hermegauss``
#: weights overflow to NaN from about 370 nodes.
MAX_HERMITE_NODES = 300


@cache
def _legendre() -> tuple[np.ndarray, np.ndarray]:
    return leggauss(PANEL_NODES)


@cache
def _hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilists' Gauss–Hermite nodes and weights normalised to sum to 1."""
    z, w = hermegauss(n)
    return z, w / math.sqrt(2.0 * math.pi)


def _normal_rule(q: float) -> tuple[np.ndarray, np.ndarray]:
    """[nodes] z and [nodes] weights with ``Σ w·f(√q z) ≈ E[f(√q z)]``, z ~ N(0, 1).

    Each half-line [0, Z_MAX] is cut at ``s, 2s, 4s, …`` with ``s = min(1, 1/√q)``, the
    scale in z on which an activation with unit-scale features varies; every panel gets
    PANEL_NODES Gauss–Legendre nodes. Panels grow geometrically because a singularity of
    φ off the real axis near x = 0 (tanh's poles at ±iπ/2) limits only the panels near
    z = 0; about 6 + log2(√q) panels per side (5 for q ≤ 1).
    """
    scale = min(1.0, 1.0 / math.sqrt(q))
    inner = scale * 2.0 ** np.arange(math.ceil(math.log2(Z_MAX / scale)))
    edges = np.concatenate(([0.0], inner[inner < Z_MAX], [Z_MAX]))
    x, w = _legendre()
    mid = (edges[1:] + edges[:-1]) / 2
    half = (edges[1:] - edges[:-1]) / 2
    z = (mid[:, None] + half[:, None] * x).ravel()
    weights = (half[:, None] * w).ravel() * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return np.concatenate((-z[::-1], z)), np.concatenate((weights[::-1], weights))


def gaussian_expectation(f: ArrayFunction, q: float, n: int | None = None) -> float:
    """E[f(√q z)] for z ~ N(0, 1): the mean of f over a centred Gaussian of variance q.

    ``f`` is element-wise on float64 arrays. By default a composite Gauss–Legendre rule
    split at z = 0 (:func:`_normal_rule`, a few hundred nodes): it converges
    exponentially when f is analytic on each half-line, whatever q: for φ² and φ'² of
    every activation here it agrees with 30-digit adaptive quadrature to 1e-15 (relative)
    for q from 1e-4 to 1e8. With ``n``, probabilists' Gauss–Hermite with ``n``
    nodes (``numpy.polynomial.hermite_e.hermegauss``, n ≤ MAX_HERMITE_NODES).

    Why not Gauss–Hermite by default: its nodes near 0 are about π/√n apart, while
    tanh(√q z)² and tanh'(√q z)² change on a scale 1/√q in z. With 200 nodes its error on
    E[tanh'(√q z)²] is 2e-11 at q = 1 but 3e-7 at q = 4, 2e-4 at q = 10 and 3e-2 at
    q = 100, and numpy's weights turn NaN from about 370 nodes. Across a kink at z = 0 it
    converges only algebraically (ELU's φ'²: error 1e-3 with 300 nodes at q = 1), where
    the split rule is exact. ReLU's q-map and χ1 use closed forms, since quadrature over
    its kink is exact only by luck: symmetric Gauss–Hermite with an even n gets
    E[relu(√q z)²] = q/2 and E[step(√q z)²] = 1/2 exactly, an odd n puts a node on the
    kink and gives E[step²] = 0.233 with 5 nodes.

    ``q = 0`` gives f(0); ``q = inf`` gives the limit (f(+∞) + f(−∞))/2, evaluated at
    ±1e300 (inf for f growing without bound). A NaN from f raises TheoryInputError.
    """
    q = _check_q(q, "q")
    if n is not None and not (isinstance(n, int | np.integer) and 1 <= n <= MAX_HERMITE_NODES):
        raise TheoryInputError(
            f"Expected n, the number of Gauss–Hermite nodes, to be an integer in "
            f"[1, {MAX_HERMITE_NODES}], but got {n!r}; pass n=None for the default rule"
        )
    if math.isinf(q):
        z, w = np.array([-1e300, 1e300]), np.array([0.5, 0.5])
    elif q == 0.0:
        z, w = np.zeros(1), np.ones(1)
    else:
        z, w = _hermite(int(n)) if n is not None else _normal_rule(q)
        z = math.sqrt(q) * z
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        values = np.asarray(f(z), dtype=np.float64)
        if values.ndim == 0:  # a constant function
            values = np.full(z.shape, float(values))
        if values.shape != z.shape:
            raise TheoryInputError(
                f"Expected f to be element-wise (shape {z.shape} in, the same out), but got "
                f"shape {values.shape}; pass a function that maps each point to a number"
            )
        if np.isnan(values).any():
            raise TheoryInputError(
                f"Expected f to be defined on the quadrature nodes, but got NaN at x = "
                f"{z[np.isnan(values)][:3].tolist()} for q = {q:g}; check the function there"
            )
        return float(np.dot(w, values))


# ----------------------------------------------------------------------- q-map and χ1


def _number(value: object, what: str) -> float:
    """``value`` as a float, or a TheoryInputError naming the argument."""
    try:
        return float(value)  # type: ignore[arg-type]  # float() itself checks the type
    except (TypeError, ValueError):
        raise TheoryInputError(
            f"Expected {what} to be a number, but got {value!r}; pass a float"
        ) from None


def _check_q(q: float, what: str) -> float:
    q = _number(q, what)
    if not q >= 0.0:  # NaN fails too
        raise TheoryInputError(
            f"Expected {what}, a variance, to be ≥ 0, but got {q!r}; pass the mean square "
            f"of the pre-activations"
        )
    return q


def _check_sigmas(sigma_w: float, sigma_b: float) -> tuple[float, float]:
    """Validated standard deviations (σ_w, σ_b) as floats."""
    checked = []
    for name, value in (("sigma_w", sigma_w), ("sigma_b", sigma_b)):
        v = _number(value, name)
        if not (v >= 0.0 and math.isfinite(v)):
            raise TheoryInputError(
                f"Expected {name}, a standard deviation, to be finite and ≥ 0, but got "
                f"{value!r}; pass e.g. sigma_w=math.sqrt(1.76) for σ_w² = 1.76"
            )
        checked.append(v)
    return checked[0], checked[1]


def _q_map(act: MeanFieldActivation, sigma_w: float, sigma_b: float, q: float) -> float:
    if sigma_w == 0.0:
        return sigma_b * sigma_b
    if act.homogeneous is not None:
        return sigma_w * sigma_w * act.homogeneous[0] * q + sigma_b * sigma_b
    second = gaussian_expectation(lambda x: act.phi(x) ** 2, q)
    return sigma_w * sigma_w * second + sigma_b * sigma_b


def q_map(q: float, activation: ActivationLike, sigma_w: float, sigma_b: float) -> float:
    """The variance of the next layer's pre-activations: σ_w² E[φ(√q z)²] + σ_b².

    ReLU gives σ_w² q/2 + σ_b² and linear σ_w² q + σ_b², exactly.
    """
    sigma_w, sigma_b = _check_sigmas(sigma_w, sigma_b)
    return _q_map(resolve_activation(activation), sigma_w, sigma_b, _check_q(q, "q"))


def fixed_point_q(
    activation: ActivationLike,
    sigma_w: float,
    sigma_b: float,
    q0: float = 1.0,
    tol: float = 1e-12,
    max_iter: int = 1000,
) -> float:
    """q*, where the q-map started at ``q0`` (the inputs' mean square) settles.

    Returns:
        A finite q* to an estimated error of ``tol·max(1, q*)`` (where the map is nearly
        marginal: its rounding, 1e-14·q*, divided by 1 − its slope); ``0.0`` when the
        variance collapses (σ_b = 0, φ(0) = 0 and σ_w² φ'(0)² ≤ 1: all signals die); or
        ``math.inf`` when it grows without bound, which is a real outcome, not a failure:
        ReLU with σ_w² > 2 (or σ_w² = 2 and σ_b > 0), linear with σ_w² > 1, and the other
        unbounded activations (GELU, SiLU, ELU, softplus) with σ_w² > 2 unless q0 lies in
        the basin of a finite fixed point. χ1 stays meaningful there (:func:`chi1` takes
        its limit).

    Raises:
        FixedPointError: when the map neither converges nor passes 1e20·(1 + q-map(1))
            (taken as unbounded) within ``max_iter`` evaluations, which happens only at
            marginal points.

    ReLU and linear use the closed form of their affine map ``q ↦ a·q + σ_b²``. Other
    activations iterate the map from q0 with Newton's method on q-map(q) − q, using the
    map's exact derivative (:func:`_map_and_slope`): where the map contracts (slope < 1)
    Newton's step heads for the stable fixed point the plain iteration would reach, in
    a handful of evaluations even near marginal points (tanh with σ_b = 0 near σ_w = 1,
    softplus near σ_w² = 2, where q* is huge and the slope almost 1); where it expands
    upward the iterate jumps at least fourfold, so divergence shows within about 40
    evaluations; otherwise it takes the plain step. Overshooting the nearest fixed point
    is harmless when no further fixed point lies beyond it, which holds for the built-in
    activations. ``max_iter`` counts q-map evaluations.
    """
    act = resolve_activation(activation)
    sigma_w, sigma_b = _check_sigmas(sigma_w, sigma_b)
    q0 = _check_q(q0, "q0")
    if not (math.isfinite(q0) and tol > 0 and math.isfinite(tol)):
        raise TheoryInputError(
            f"Expected a finite q0 and a tolerance tol > 0, but got q0={q0!r}, tol={tol!r}; "
            f"pass e.g. q0=1.0, tol=1e-12"
        )
    if not (isinstance(max_iter, int | np.integer) and max_iter >= 2):
        raise TheoryInputError(
            f"Expected max_iter to be an integer ≥ 2, but got {max_iter!r}; pass e.g. 1000"
        )
    if act.homogeneous is not None:
        slope = sigma_w * sigma_w * act.homogeneous[0]
        return _affine_fixed_point(slope, sigma_b * sigma_b, q0)
    q = _solve_fixed_point(act, sigma_w, sigma_b, q0, tol, int(max_iter))
    if 0.0 < q <= tol and _q_map(act, sigma_w, sigma_b, 0.0) == 0.0:
        return 0.0  # collapsing to the fixed point 0: report it exactly
    return q


def _affine_fixed_point(slope: float, offset: float, q0: float) -> float:
    """Where ``q ↦ slope·q + offset`` (offset ≥ 0) goes from q0.

    A slope within 1e-15 of 1 counts as 1: ``math.sqrt(2.0)**2 / 2`` is 1 + 2.2e-16, and
    He initialisation should not read as exploding.
    """
    if abs(slope - 1.0) <= 1e-15:
        slope = 1.0
    if slope < 1.0:
        return offset / (1.0 - slope)
    if offset == 0.0 and (slope == 1.0 or q0 == 0.0):
        return q0  # slope 1: every q is fixed; slope > 1: 0 is, unstably
    return math.inf


#: A q-map iterate above this times (1 + q-map(1)) counts as growing without bound: the
#: pre-activations would be 1e10 times the scale of any activation's features.
_UNBOUNDED = 1e20

#: Relative rounding error of one q-map evaluation (a few hundred float64 terms summed;
#: measured near 1e-16): a residual below this carries no information.
_MAP_ROUNDING = 1e-14


def _map_and_slope(
    act: MeanFieldActivation, sigma_w: float, sigma_b: float, q: float
) -> tuple[float, float]:
    """The q-map at q and its derivative, from one pass over the quadrature nodes.

    d/dq E[φ(√q z)²] = E[φ(x) φ'(x) x] / q with x = √q z (differentiate under the
    integral), which needs no finite difference: near a marginal fixed point the map's
    slope is close to 1, and a difference quotient would lose all its digits there.
    The slope is NaN at q = 0.
    """
    if q == 0.0:
        return _q_map(act, sigma_w, sigma_b, q), math.nan
    z, w = _normal_rule(q)
    x = math.sqrt(q) * z
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        p, d = act.phi(x), act.dphi(x)
        second, slope = float(np.dot(w, p * p)), float(np.dot(w, p * d * x)) / q
    return sigma_w * sigma_w * second + sigma_b * sigma_b, sigma_w * sigma_w * slope


def _solve_fixed_point(
    act: MeanFieldActivation, sigma_w: float, sigma_b: float, q0: float, tol: float, max_iter: int
) -> float:
    """Safeguarded Newton iteration of the q-map from q0 (see :func:`fixed_point_q`)."""
    limit = _UNBOUNDED * (1.0 + _q_map(act, sigma_w, sigma_b, 1.0))
    q, residual, slope = q0, math.nan, math.nan
    for _ in range(max_iter):
        m, slope = _map_and_slope(act, sigma_w, sigma_b, q)
        if m > limit:
            return math.inf
        if not math.isfinite(m):
            raise TheoryInputError(
                f"Expected the q-map of {act.name} to stay finite below {limit:.3g}, but it "
                f"gave {m!r} at q = {q:.6g}; check the activation's functions"
            )
        residual = m - q
        if residual == 0.0:
            return q
        if slope < 1.0:  # contracting toward a stable fixed point: Newton's step
            newton = q + residual / (1.0 - slope)
            if abs(residual) <= max(tol * (1.0 - slope) * max(1.0, q), _MAP_ROUNDING * q):
                return max(newton, 0.0)
            q = max(newton, 0.0)  # 0 only when the linearisation says the signal dies
        elif residual > 0.0:  # expanding upward: jump ×4, toward a fixed point or inf
            q = m + 3.0 * max(residual, m)
        else:
            q = m
    raise FixedPointError(
        f"Expected the q-map of {act.name} to converge within max_iter={max_iter} "
        f"evaluations, but q is still moving at q = {q:.6g} (step {residual:.3g}, slope "
        f"{slope:.6g}); this is a marginal point of the map: raise max_iter or tol, or move "
        f"σ_w or σ_b"
    )


def chi1(
    activation: ActivationLike,
    sigma_w: float,
    sigma_b: float,
    q_star: float | None = None,
    q0: float = 1.0,
) -> float:
    """χ1 = σ_w² E[φ'(√q* z)²]: the factor by which one layer multiplies the mean square
    of the back-propagated gradient (with respect to the pre-activations).

    ``q_star`` defaults to :func:`fixed_point_q` from ``q0``. At ``q* = inf`` this is the
    limit σ_w² (φ'(+∞)² + φ'(−∞)²)/2, i.e. σ_w²/2 for GELU, SiLU, ELU and softplus. ReLU
    gives σ_w²/2 and linear σ_w², whatever q*.
    """
    act = resolve_activation(activation)
    sigma_w, sigma_b = _check_sigmas(sigma_w, sigma_b)
    if act.homogeneous is not None:
        return sigma_w * sigma_w * act.homogeneous[1]
    if q_star is None:
        q_star = fixed_point_q(act, sigma_w, sigma_b, q0=q0)
    q_star = _check_q(q_star, "q_star")
    return sigma_w * sigma_w * gaussian_expectation(lambda x: act.dphi(x) ** 2, q_star)


# ---------------------------------------------------------------- depth and the phases


def _check_chi(chi: float) -> float:
    c = _number(chi, "chi1")
    if not c >= 0.0:
        raise TheoryInputError(
            f"Expected chi1 ≥ 0 (a ratio of mean squares), but got {chi!r}; pass the value "
            f"chi1() returns"
        )
    return c


def depth_scale(chi: float) -> float:
    """ξ = 1/|ln χ1|: the number of layers over which the gradient's mean square changes
    by a factor e (shrinks when χ1 < 1, where this is the papers' ξ = −1/ln χ1; grows
    when χ1 > 1). ``inf`` at χ1 = 1, ``0.0`` at χ1 = 0 and χ1 = inf.
    """
    c = _check_chi(chi)
    if c == 1.0:
        return math.inf
    if c == 0.0 or math.isinf(c):
        return 0.0
    return 1.0 / abs(math.log(c))


def predicted_gradient_ratio(chi: float, depth: float) -> float:
    """χ1^depth: the mean square of the gradient ``depth`` layers below a layer, relative
    to that layer's; the ratio of gradient *norms* of equally wide layers is its square
    root. Overflow gives ``inf``, underflow ``0.0``.
    """
    c = _check_chi(chi)
    d = _number(depth, "depth")
    if not (d >= 0.0 and math.isfinite(d)):
        raise TheoryInputError(
            f"Expected depth, a number of layers, to be finite and ≥ 0, but got {depth!r}; "
            f"pass e.g. depth=20"
        )
    if d == 0.0:
        return 1.0
    try:
        return math.pow(c, d)
    except OverflowError:
        return math.inf


def trainable_depth(chi: float, factor: float = TRAINABLE_DEPTH_FACTOR) -> float:
    """About how deep a network with this χ1 still trains: ``factor``·ξ (6ξ by default).

    Schoenholz et al. measured 6ξ for the depth scale of the correlation map. In the
    ordered phase that scale is exactly ξ = −1/ln χ1; in the chaotic phase the
    correlation scale differs from 1/ln χ1, so the estimate there is rougher.
    """
    return factor * depth_scale(chi)


#: The phase a network's χ1 puts it in: gradients vanish, keep their size, or explode.
MeanFieldPhase = Literal["ordered/vanishing", "critical", "chaotic/exploding"]


def regime(chi: float, critical_tol: float = CRITICAL_TOL) -> MeanFieldPhase:
    """'critical' when |χ1 − 1| ≤ critical_tol, else 'ordered/vanishing' (χ1 < 1) or
    'chaotic/exploding' (χ1 > 1)."""
    c = _check_chi(chi)
    if abs(c - 1.0) <= critical_tol:
        return "critical"
    return "ordered/vanishing" if c < 1.0 else "chaotic/exploding"


@dataclass(frozen=True)
class MeanField:
    """What mean-field theory predicts for one activation and initialisation.

    ``q_star`` may be ``inf`` (no finite fixed point; see :func:`fixed_point_q`) or 0.
    ``depth_scale`` is ξ = 1/|ln χ1| layers, ``inf`` at criticality.
    """

    activation: str
    sigma_w: float
    sigma_b: float
    q_star: float
    chi1: float
    depth_scale: float
    regime: MeanFieldPhase

    @property
    def trainable_depth(self) -> float:
        """About 6ξ layers (:func:`trainable_depth`)."""
        return TRAINABLE_DEPTH_FACTOR * self.depth_scale

    def gradient_ratio(self, depth: float) -> float:
        """χ1^depth (:func:`predicted_gradient_ratio`)."""
        return predicted_gradient_ratio(self.chi1, depth)

    def __str__(self) -> str:
        change = "shrinks" if self.chi1 < 1 else "grows"
        scale = (
            "keeps its size at any depth"
            if math.isinf(self.depth_scale)
            else f"{change} by e every {self.depth_scale:.3g} layers"
        )
        return (
            f"{self.activation} σ_w={self.sigma_w:.4g} σ_b={self.sigma_b:.4g}: "
            f"q*={self.q_star:.4g}, χ1={self.chi1:.4g} ({self.regime}); the gradient's mean "
            f"square {scale}, trainable to about {self.trainable_depth:.3g} layers"
        )


def mean_field(
    activation: ActivationLike,
    sigma_w: float,
    sigma_b: float,
    q0: float = 1.0,
    critical_tol: float = CRITICAL_TOL,
) -> MeanField:
    """q*, χ1, ξ and the regime for weights N(0, σ_w²/N) and biases N(0, σ_b²)."""
    act = resolve_activation(activation)
    q_star = fixed_point_q(act, sigma_w, sigma_b, q0=q0)
    chi = chi1(act, sigma_w, sigma_b, q_star=q_star)
    return MeanField(
        activation=act.name,
        sigma_w=float(sigma_w),
        sigma_b=float(sigma_b),
        q_star=q_star,
        chi1=chi,
        depth_scale=depth_scale(chi),
        regime=regime(chi, critical_tol),
    )


# ------------------------------------------------------------------- the edge of chaos

#: Ratio between neighbouring σ_w of the scan for the first crossing of χ1 = 1.
_SCAN_RATIO = 1.2


def edge_of_chaos_sigma_w(
    activation: ActivationLike,
    sigma_b: float,
    sigma_w_range: tuple[float, float] = (1e-2, 1e3),
    xtol: float = 1e-12,
    q0: float = 1.0,
) -> float:
    """The σ_w (a standard deviation) at which χ1 = 1 for this σ_b.

    ReLU: √2 and linear: 1, for any σ_b (closed form). Otherwise the smallest σ_w in
    ``sigma_w_range`` where χ1 (at the fixed point reached from ``q0``) crosses 1 on a
    geometric grid of ratio 1.2, refined by bisection to a relative ``xtol``; a second
    crossing within one grid step of the first would be missed (none occurs for the
    activations built in). Where χ1 − 1 grows only quadratically above the edge (tanh,
    erf, ELU with σ_b = 0), rounding limits the answer to a relative 1e-6 (3e-5 for
    ELU). Softplus's edge is σ_w = √2 for every σ_b, approached as q* → inf.

    Raises:
        TheoryInputError: when χ1 does not reach 1 in ``sigma_w_range``, or jumps over 1
            without crossing it: with σ_b = 0, GELU and SiLU go from q* = 0 (χ1 = σ_w²/4)
            straight to q* = inf (χ1 = σ_w²/2), and no σ_w is critical.
    """
    act = resolve_activation(activation)
    _, sigma_b = _check_sigmas(1.0, sigma_b)
    lo, hi = (float(v) for v in sigma_w_range)
    if not (0.0 < lo < hi < math.inf and xtol > 0):
        raise TheoryInputError(
            f"Expected 0 < sigma_w_range[0] < sigma_w_range[1] < inf and xtol > 0, but got "
            f"{sigma_w_range!r}, xtol={xtol!r}; pass e.g. sigma_w_range=(0.01, 1000)"
        )
    if act.homogeneous is not None:
        return 1.0 / math.sqrt(act.homogeneous[1])

    def excess(sigma_w: float) -> float:
        return chi1(act, sigma_w, sigma_b, q0=q0) - 1.0

    grid = np.minimum(
        lo * _SCAN_RATIO ** np.arange(math.ceil(math.log(hi / lo, _SCAN_RATIO)) + 1), hi
    )
    first = excess(lo)
    if first >= 0.0:
        raise TheoryInputError(
            f"Expected χ1 < 1 at the low end of sigma_w_range, but {act.name} with σ_b = "
            f"{sigma_b:g} has χ1 = {first + 1:.6g} at σ_w = {lo:g}; pass a smaller "
            f"sigma_w_range[0]"
        )
    below, f_below = lo, first
    for above in map(float, grid[1:]):
        f_above = excess(above)
        if f_above >= 0.0:
            below, above, f_below, f_above = _bisect(excess, below, above, f_below, f_above, xtol)
            if f_above - f_below > _JUMP:
                raise TheoryInputError(
                    f"Expected χ1 to cross 1 continuously, but for {act.name} with σ_b = "
                    f"{sigma_b:g} it jumps from {f_below + 1:.6g} to {f_above + 1:.6g} at "
                    f"σ_w ≈ {above:.6g}, where the fixed point q* reached from q0 = {q0:g} "
                    f"switches (q* = {fixed_point_q(act, below, sigma_b, q0):.3g} → "
                    f"{fixed_point_q(act, above, sigma_b, q0):.3g}); no σ_w is critical "
                    f"here: try a larger σ_b, another q0, or another activation"
                )
            return 0.5 * (below + above)
        below, f_below = above, f_above
    raise TheoryInputError(
        f"Expected χ1 to reach 1 for σ_w in {sigma_w_range}, but {act.name} with σ_b = "
        f"{sigma_b:g} stays ordered (χ1 = {first + 1:.3g} at σ_w = {lo:g}, "
        f"{f_below + 1:.3g} at σ_w = {hi:g}); widen sigma_w_range or check the activation"
    )


#: A change of χ1 across the final bisection bracket above this is a jump, not a crossing.
_JUMP = 1e-3


def _bisect(
    f: Callable[[float], float],
    below: float,
    above: float,
    f_below: float,
    f_above: float,
    xtol: float,
) -> tuple[float, float, float, float]:
    """Shrink ``[below, above]`` with f(below) < 0 ≤ f(above) to a relative width ``xtol``;
    returns the final bracket and f at its ends."""
    while above - below > xtol * above:
        mid = 0.5 * (below + above)
        if mid in (below, above):
            break
        f_mid = f(mid)
        if f_mid < 0.0:
            below, f_below = mid, f_mid
        else:
            above, f_above = mid, f_mid
    return below, above, f_below, f_above
