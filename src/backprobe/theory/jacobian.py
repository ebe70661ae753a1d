"""Singular values of a model's input–output Jacobian: dynamical isometry.

A network trains well when back-propagation neither shrinks nor stretches the gradient
in any direction, that is when every singular value of the input–output Jacobian
``J = ∂f(x)/∂x`` is close to 1: *dynamical isometry* (Saxe et al. 2014 for deep linear
nets; Pennington, Schoenholz & Ganguli 2017 for nonlinear ones). The mean squared
singular value is the mean-field quantity χ1^L: above 1 the gradient explodes on
average, below 1 it vanishes. Its spread (the condition number σ_max/σ_min) tells what
the mean hides: a deep ReLU net at He initialisation has a mean squared singular value
near 1 yet a spectrum spread over orders of magnitude, so some directions still vanish
and others explode.

How batches are handled. ``x`` is always a batch ``[B, *in_shape]``. For every example
``b`` the Jacobian is the *per-example* one, ``J_b = ∂ flatten(fn(x_b)) / ∂ flatten(x_b)``
of shape ``[D_out, D_in]``, computed by calling ``fn`` on the batch of one
``x[b:b+1]`` (so ``fn`` is a batch-first model such as an ``nn.Module``, and examples
must not interact: call ``model.eval()`` first so BatchNorm uses its running statistics
and Dropout is off). Jacobians are never averaged across examples (the spectrum of an
average Jacobian describes no example's gradient); the result is one row of singular
values per example, ``[B, K]``, and :func:`isometry_summary` pools those rows into one
empirical spectral distribution, which is what Pennington et al. plot.

Precision. Everything is computed in float64. An ``nn.Module`` is evaluated through
``torch.func.functional_call`` with float64 copies of its parameters and buffers, so the
model itself is not modified; a plain callable receives float64 input and must accept it.

Two methods:

* ``"full"``: the whole Jacobian by ``torch.func.jacrev`` (or ``jacfwd`` when
  ``D_in < D_out``), then ``torch.linalg.svdvals``. Exact, ``O(D_in·D_out)`` memory.
* ``"top"``: the ``k`` largest singular values by block subspace iteration on ``JᵀJ``
  using only Jacobian–vector products (``torch.func.jvp``) and vector–Jacobian products
  (``torch.func.vjp``); the Jacobian is never formed. Memory ``O((D_in + D_out)·m)``
  for a block of ``m = k + oversample`` vectors.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacfwd, jacrev, jvp, vjp, vmap

from ..errors import TheoryInputError
from ._inputs import as_tensor

__all__ = [
    "BAND",
    "DEFAULT_TOP_K",
    "EXPLODING",
    "FULL_MAX_ENTRIES",
    "ILL_CONDITIONED",
    "ISOMETRIC",
    "ISOMETRIC_FRACTION",
    "OVERSAMPLE",
    "VANISHING",
    "IsometrySummary",
    "TheoryInputError",
    "Verdict",
    "isometry_summary",
    "jacobian_singular_values",
    "layer_jacobian_singular_values",
]

Method = Literal["auto", "full", "top"]

#: A function of one tensor returning one tensor.
TensorFunction = Callable[[torch.Tensor], torch.Tensor]

#: ``method="auto"`` uses ``"full"`` while one example's Jacobian has at most this many
#: entries (D_in·D_out ≤ 4·10⁶: 32 MB in float64, e.g. 2000 × 2000, whose SVD takes about
#: a second), and ``"top"`` above it.
FULL_MAX_ENTRIES = 4_000_000

#: How many singular values ``"top"`` returns when ``k`` is not given.
DEFAULT_TOP_K = 8

#: Extra vectors in the subspace-iteration block beyond ``k``: the k-th value then
#: converges like (σ_{m+1}/σ_k)^(2·iteration) instead of (σ_{k+1}/σ_k)^(2·iteration).
OVERSAMPLE = 10

Verdict = Literal["isometric", "vanishing", "exploding", "ill-conditioned"]
#: Mean squared singular value in ``BAND`` and at least ``ISOMETRIC_FRACTION`` of the
#: singular values in ``BAND``.
ISOMETRIC: Verdict = "isometric"
#: Mean squared singular value below ``BAND[0]``: gradients shrink on average.
VANISHING: Verdict = "vanishing"
#: Mean squared singular value above ``BAND[1]``: gradients grow on average.
EXPLODING: Verdict = "exploding"
#: Mean squared singular value in ``BAND`` but fewer than ``ISOMETRIC_FRACTION`` of the
#: singular values in ``BAND``: some directions vanish or explode although the mean does not.
ILL_CONDITIONED: Verdict = "ill-conditioned"

#: A singular value (and the mean squared singular value) within [1/2, 2] counts as
#: "near 1": a factor 2 either way per pass through the whole network.
BAND = (0.5, 2.0)

#: Fraction of singular values that must lie in ``BAND`` for the verdict "isometric".
ISOMETRIC_FRACTION = 0.9


#: The DeprecationWarning torch emits when forward-mode AD first loads its decompositions.
_JIT_WARNING = r"`torch\.jit\.script` is (deprecated|not supported)"

# ------------------------------------------------------------------------------ inputs


def _batch(x: object, what: str = "x") -> torch.Tensor:
    """``x`` as a detached float64 tensor ``[B, *in_shape]`` with B ≥ 1 and finite entries."""
    t = as_tensor(x, what, "a batch such as torch.randn(8, 32)")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TheoryInputError(
            f"Expected {what} with real floating-point entries but got dtype {t.dtype}; "
            f"pass a float tensor (a Jacobian needs a differentiable input)."
        )
    if t.dim() < 2 or t.shape[0] == 0 or t[0].numel() == 0:
        raise TheoryInputError(
            f"Expected {what} as a non-empty batch [B, *in_shape] but got shape "
            f"{tuple(t.shape)}; for a single example pass x.unsqueeze(0)."
        )
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise TheoryInputError(
            f"Expected {what} to hold finite values but it contains NaN or inf; pass real inputs."
        )
    return t


def _float64_function(
    fn: TensorFunction | nn.Module,
) -> TensorFunction:
    """``fn`` evaluated in float64: an nn.Module through float64 copies of its parameters
    and buffers (the module is left as it is), a plain callable as given."""
    if isinstance(fn, nn.Module):
        state = {
            name: (t.detach().to(torch.float64) if t.is_floating_point() else t.detach())
            for name, t in [*fn.named_parameters(), *fn.named_buffers()]
        }
        module = fn

        def call(z: torch.Tensor) -> torch.Tensor:
            return functional_call(module, state, (z,))

        return call
    if not callable(fn):
        raise TheoryInputError(
            f"Expected fn to be an nn.Module or a callable but got {type(fn).__name__}; pass "
            f"the model itself."
        )
    return fn


def _forward(f: TensorFunction, xb: torch.Tensor) -> torch.Tensor:
    """``f(xb)`` as a tensor, with a TheoryInputError when fn cannot take float64 input."""
    try:
        with torch.no_grad():
            out = f(xb)
    except RuntimeError as err:
        if "dtype" in str(err) or "Double" in str(err) or "Float" in str(err):
            raise TheoryInputError(
                f"Expected fn to accept float64 input but it raised: {err}; pass the "
                f"nn.Module itself (it is evaluated in float64 without being changed) or a "
                f"callable over float64 weights."
            ) from err
        raise
    if not isinstance(out, torch.Tensor) or out.numel() == 0:
        raise TheoryInputError(
            f"Expected fn to return a non-empty tensor but got {type(out).__name__}"
            f"{'' if not isinstance(out, torch.Tensor) else ' with no entries'}; wrap fn so "
            f"it returns the one output whose Jacobian you want."
        )
    return out


def _check_k(k: object, rank: int) -> int | None:
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= int(k) <= rank:
        raise TheoryInputError(
            f"Expected k to be an integer in [1, min(D_in, D_out) = {rank}] but got {k!r}; "
            f"pass k=None for all singular values."
        )
    return int(k)


def _check_positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise TheoryInputError(
            f"Expected {what} to be a positive integer but got {value!r}; pass e.g. {what}=300."
        )
    return int(value)


# ------------------------------------------------------------------------------ spectra


def _full_svals(g: TensorFunction, z: torch.Tensor, d_out: int) -> torch.Tensor:
    """All singular values (descending) of the Jacobian of ``g`` ([D_in] → [D_out]) at z."""
    d_in = z.numel()
    jac = (jacrev(g) if d_out <= d_in else jacfwd(g))(z).reshape(d_out, d_in)
    return torch.linalg.svdvals(jac)


def _top_svals(
    g: TensorFunction,
    z: torch.Tensor,
    d_out: int,
    k: int,
    iters: int,
    tol: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """The k largest singular values (descending) of the Jacobian of ``g`` at z by block
    subspace iteration on JᵀJ with Rayleigh–Ritz: V ← qr(Jᵀ J V); the singular values of
    the [D_out, m] matrix J V, for V with orthonormal columns, are lower bounds that
    increase to the top singular values of J."""
    d_in = z.numel()
    m = min(d_in, d_out, k + OVERSAMPLE)
    pullback = vjp(g, z)[1]

    def push(v: torch.Tensor) -> torch.Tensor:
        return jvp(g, (z,), (v,))[1]

    def pull(u: torch.Tensor) -> torch.Tensor:
        return pullback(u)[0]

    jv = vmap(push, in_dims=1, out_dims=1)
    jtu = vmap(pull, in_dims=1, out_dims=1)
    start = torch.randn(d_in, m, dtype=torch.float64, generator=generator)
    v = torch.linalg.qr(start)[0]
    previous: torch.Tensor | None = None
    for _ in range(iters):
        u = jv(v)
        s = torch.linalg.svdvals(u)[:k]
        if previous is not None and (s - previous).abs().max() <= tol * max(float(s[0]), 1e-300):
            return s
        previous = s
        v = torch.linalg.qr(jtu(u))[0]
    warnings.warn(
        f"Subspace iteration for the top {k} singular values did not converge to a "
        f"relative change of {tol:g} within {iters} iterations; the values may be too "
        f"low. Raise iters, or use method='full' for small widths.",
        RuntimeWarning,
        stacklevel=4,
    )
    return previous if previous is not None else torch.zeros(k, dtype=torch.float64)


def jacobian_singular_values(
    fn: TensorFunction | nn.Module,
    x: torch.Tensor | np.ndarray,
    k: int | None = None,
    method: Method = "auto",
    iters: int = 300,
    seed: int = 0,
    tol: float = 1e-12,
) -> np.ndarray:
    """Singular values of each example's input–output Jacobian, ``[B, K]`` float64.

    ``fn`` is a batch-first function (an ``nn.Module`` or callable) mapping
    ``[n, *in_shape]`` to ``[n, *out_shape]`` without mixing examples; ``x`` is a batch
    ``[B, *in_shape]`` (for one example pass ``x.unsqueeze(0)``). Row ``b`` of the result
    holds the singular values, descending, of ``J_b = ∂ flatten(fn(x[b:b+1])) /
    ∂ flatten(x[b:b+1])``, a ``[D_out, D_in]`` matrix; rows are per example, never
    averaged. Pass the result to :func:`isometry_summary` to pool all examples' values.

    ``method``: ``"full"`` forms each Jacobian (``torch.func.jacrev``/``jacfwd``) and
    takes all ``K = min(D_in, D_out)`` singular values with ``torch.linalg.svdvals``, or
    the top ``k`` of them; ``"top"`` finds the top ``k`` (default :data:`DEFAULT_TOP_K`)
    by block subspace iteration with jvp/vjp only, stopping when no value changes by more
    than ``tol``·σ_max between iterations (and warning after ``iters`` iterations);
    ``"auto"`` is ``"full"`` while ``D_in·D_out ≤`` :data:`FULL_MAX_ENTRIES`, else
    ``"top"``. ``seed`` seeds the random starting block of ``"top"``.

    Everything is computed in float64 (an nn.Module through float64 copies of its
    parameters; the module itself is not changed). Training-mode layers are evaluated as
    they are: call ``model.eval()`` first for a deterministic Jacobian.
    """
    if method not in ("auto", "full", "top"):
        raise TheoryInputError(
            f"Expected method to be 'auto', 'full' or 'top' but got {method!r}; pass method='auto'."
        )
    f = _float64_function(fn)
    xs = _batch(x)
    iters = _check_positive_int(iters, "iters")
    if not (isinstance(tol, numbers.Real) and math.isfinite(tol) and tol >= 0):
        raise TheoryInputError(
            f"Expected tol to be a finite number ≥ 0 but got {tol!r}; pass e.g. tol=1e-12."
        )
    in_shape = (1, *xs.shape[1:])
    d_in = xs[0].numel()
    d_out = _forward(f, xs[:1]).numel()
    rank = min(d_in, d_out)
    k = _check_k(k, rank)
    if method == "auto":
        method = "full" if d_in * d_out <= FULL_MAX_ENTRIES else "top"
    if method == "top" and k is None:
        k = min(rank, DEFAULT_TOP_K)

    def g(z: torch.Tensor) -> torch.Tensor:
        return f(z.reshape(in_shape)).reshape(-1)

    generator = torch.Generator().manual_seed(int(seed))
    rows = []
    with warnings.catch_warnings():
        # torch's first forward-mode AD call scripts its jvp decompositions and warns that
        # torch.jit.script is deprecated: torch's own business, not the user's.
        warnings.filterwarnings("ignore", _JIT_WARNING, DeprecationWarning)
        for b in range(xs.shape[0]):
            z = xs[b].reshape(-1)
            if method == "full":
                s = _full_svals(g, z, d_out)
                rows.append(s if k is None else s[:k])
            else:
                assert k is not None
                rows.append(_top_svals(g, z, d_out, k, iters, float(tol), generator))
    return torch.stack(rows).detach().numpy()


def _layer_names(model: nn.Sequential, layers: Iterable[str | int] | None) -> list[str]:
    """The names of the selected children of ``model`` in model order."""
    names = [name for name, _ in model.named_children()]
    if layers is None:
        return names
    if isinstance(layers, (str, int)):
        layers = [layers]
    chosen = set()
    for layer in layers:
        if (
            isinstance(layer, int)
            and not isinstance(layer, bool)
            and -len(names) <= layer < len(names)
        ):
            chosen.add(names[layer])
        elif isinstance(layer, str) and layer in names:
            chosen.add(layer)
        else:
            raise TheoryInputError(
                f"Expected layers to name children of the nn.Sequential {names} (by name or "
                f"index) but got {layer!r}; pass e.g. layers=[{names[0]!r}] or layers=None "
                f"for all."
            )
    return [name for name in names if name in chosen]


def layer_jacobian_singular_values(
    model: nn.Sequential,
    x: torch.Tensor | np.ndarray,
    layers: Iterable[str | int] | None = None,
    k: int | None = None,
    method: Method = "auto",
    iters: int = 300,
    seed: int = 0,
    tol: float = 1e-12,
) -> dict[str, np.ndarray]:
    """Singular values of each layer's own Jacobian, at the activations ``x`` produces.

    ``model`` is an ``nn.Sequential``; ``x`` a batch ``[B, *in_shape]``. The batch is
    propagated in float64 through the children in order, and for every selected child
    (``layers``: names or indices of children, default all) the result maps its name to
    :func:`jacobian_singular_values` of that child at its own input batch: ``[B, K_layer]``
    singular values of ``∂ output_b / ∂ input_b`` per example. The input–output Jacobian
    is the product of these, so a layer whose spectrum sits far from 1 is where the
    gradient shrinks or grows. ``k``, ``method``, ``iters``, ``seed`` and ``tol`` are
    passed on to every layer. Returns a dict in model order.
    """
    if not isinstance(model, nn.Sequential):
        raise TheoryInputError(
            f"Expected model to be an nn.Sequential but got {type(model).__name__}; pass the "
            f"nn.Sequential, or use jacobian_singular_values(fn, x) on each part yourself."
        )
    if len(model) == 0:
        raise TheoryInputError(
            "Expected an nn.Sequential with at least one layer but got an empty one; pass a "
            "model with layers."
        )
    selected = _layer_names(model, layers)
    acts = _batch(x)
    out: dict[str, np.ndarray] = {}
    for name, child in model.named_children():
        if not selected:
            break
        if name == selected[0]:
            selected.pop(0)
            out[name] = jacobian_singular_values(
                child, acts, k=k, method=method, iters=iters, seed=seed, tol=tol
            )
        if selected:
            acts = _forward(_float64_function(child), acts)
    return out


# ------------------------------------------------------------------------------ summary


@dataclass(frozen=True)
class IsometrySummary:
    """How close a (pooled) Jacobian spectrum is to isometry.

    ``mean_squared`` is the mean of σ² over all values: the per-direction average gain of
    the squared gradient norm (χ1^L in mean-field terms). ``condition_number`` is
    σ_max/σ_min (inf when σ_min = 0). ``fraction_in_band`` is the fraction of singular
    values in :data:`BAND` = [1/2, 2]. ``verdict``: ``"vanishing"`` when ``mean_squared``
    < 1/2, ``"exploding"`` when > 2, otherwise ``"isometric"`` when at least
    :data:`ISOMETRIC_FRACTION` (90 %) of the values are in the band and
    ``"ill-conditioned"`` when not. For a top-k spectrum (``method="top"``) all of these
    describe only the top k directions.
    """

    count: int
    mean_squared: float
    max: float
    min: float
    condition_number: float
    fraction_in_band: float
    verdict: Verdict


def isometry_summary(svals: np.ndarray | torch.Tensor) -> IsometrySummary:
    """Summarise singular values of any shape (e.g. ``[B, K]`` from
    :func:`jacobian_singular_values`), pooling all of them; see :class:`IsometrySummary`."""
    if isinstance(svals, dict):
        raise TheoryInputError(
            "Expected an array of singular values but got a dict; summarise one layer at a "
            "time: {name: isometry_summary(s) for name, s in spectra.items()}."
        )
    try:
        s = (
            svals.detach().cpu().to(torch.float64).numpy()
            if isinstance(svals, torch.Tensor)
            else np.asarray(svals, dtype=np.float64)
        ).ravel()
    except (TypeError, ValueError) as err:
        raise TheoryInputError(
            f"Expected singular values as a numpy array or tensor but got "
            f"{type(svals).__name__}; pass the result of jacobian_singular_values."
        ) from err
    if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s < 0):
        raise TheoryInputError(
            f"Expected a non-empty array of finite singular values ≥ 0 but got {s.size} "
            f"values (non-finite or negative: "
            f"{int(np.sum(~np.isfinite(s)) + np.sum(s < 0))}); pass the result of "
            f"jacobian_singular_values."
        )
    lo, hi = BAND
    mean_squared = float(np.mean(s**2))
    s_max, s_min = float(s.max()), float(s.min())
    condition = s_max / s_min if s_min > 0 else math.inf
    fraction = float(np.mean((s >= lo) & (s <= hi)))
    if mean_squared < lo:
        verdict: Verdict = VANISHING
    elif mean_squared > hi:
        verdict = EXPLODING
    elif fraction >= ISOMETRIC_FRACTION:
        verdict = ISOMETRIC
    else:
        verdict = ILL_CONDITIONED
    return IsometrySummary(
        count=int(s.size),
        mean_squared=mean_squared,
        max=s_max,
        min=s_min,
        condition_number=condition,
        fraction_in_band=fraction,
        verdict=verdict,
    )
