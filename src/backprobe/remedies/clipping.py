"""Gradient clipping that reports what it did: the norm before and after.

Three rules, each a thin layer over PyTorch's own ``torch.nn.utils.clip_grad_*``:

* :func:`clip_grad_norm_`: Pascanu, Mikolov & Bengio 2013, Algorithm 1: if the global L2
  norm ‖g‖ over all parameters is at least ``max_norm``, g ← max_norm·g/‖g‖. The
  direction of the step is kept; only its length is bounded, so one exploding step cannot
  throw the parameters out of the basin they are in.
* :func:`clip_grad_value_`: every gradient element clamped to [−v, v] (changes the
  direction; kept because users ask for it by name).
* :class:`AdaptiveClipper`: the threshold is ``factor`` times the running mean of recent
  norms (Pascanu: "half to ten times the average norm works"), so that no absolute
  threshold has to be tuned.

Each returns a :class:`ClipResult` of 0-d tensors on the gradients' device: the global
norms are reduced per (device, dtype) group
(:func:`~backprobe.probe.norms.global_norm`) and nothing is moved to the host, so
clipping adds no CPU↔GPU synchronisation to the step. When a
``probe`` is given, both norms are recorded on it as ``clip/pre_norm`` and
``clip/post_norm`` (and the adaptive threshold as ``clip/threshold``), readable afterwards
with ``probe.history("clip/pre_norm")``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from backprobe.remedies import clip_grad_norm_
    >>> layer = nn.Linear(3, 1)
    >>> layer(torch.full((1, 3), 100.0)).sum().backward()
    >>> result = clip_grad_norm_(layer.parameters(), max_norm=1.0)
    >>> round(float(result.pre_norm), 2), round(float(result.post_norm), 3)
    (173.21, 1.0)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import RemedyError
from ..probe.norms import global_norm

__all__ = [
    "AdaptiveClipper",
    "ClipResult",
    "clip_grad_norm_",
    "clip_grad_value_",
    "global_grad_norm",
]

Parameters = torch.Tensor | Iterable[torch.Tensor]


@dataclass(frozen=True)
class ClipResult:
    """0-d float32 tensors on the gradients' device: the global L2 gradient norm before
    and after clipping, and the threshold that was applied (``inf``: none)."""

    pre_norm: torch.Tensor
    post_norm: torch.Tensor
    threshold: torch.Tensor

    @property
    def clipped(self) -> torch.Tensor:
        """0-d bool tensor: whether the gradient was changed (pre ≠ post)."""
        return self.pre_norm != self.post_norm


def _grads(parameters: Parameters) -> list[torch.Tensor]:
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    return [p.grad for p in params if p.grad is not None]


def global_grad_norm(parameters: Parameters, *, foreach: bool | None = None) -> torch.Tensor:
    """The L2 norm of all gradients together, a 0-d float32 tensor on the first
    gradient's device (0 if none); see :func:`~backprobe.probe.norms.global_norm`."""
    return global_norm(_grads(parameters), foreach=foreach)


def _record(probe: object, result: ClipResult, threshold: bool = False) -> None:
    if probe is None:
        return
    record = getattr(probe, "record_scalar", None)
    if record is None:
        raise RemedyError(
            f"Expected a backprobe Probe with record_scalar() but got {type(probe).__name__}; "
            f"pass probe=None or a backprobe.Probe."
        )
    record("clip/pre_norm", result.pre_norm)
    record("clip/post_norm", result.post_norm)
    if threshold:
        record("clip/threshold", result.threshold)


def _check_positive(value: float, name: str) -> None:
    if not value > 0:
        raise RemedyError(f"Expected {name} > 0 but got {value!r}; pass a positive number.")


def clip_grad_norm_(
    parameters: Parameters,
    max_norm: float,
    *,
    foreach: bool | None = None,
    probe: object = None,
) -> ClipResult:
    """Pascanu's Algorithm 1: rescale all gradients together to global norm ≤ ``max_norm``.

    Uses ``torch.nn.utils.clip_grad_norm_``, which measures ‖g‖ (the one norm pass over
    the gradients, its result is the pre-clip norm) and multiplies every gradient by
    min(1, max_norm/(‖g‖ + 1e-6)): the post-clip norm is ‖g‖ times that factor, max_norm
    within 1e-6 relative when clipped. A non-finite pre-clip norm leaves non-finite
    gradients (nothing can rescue them); check ``result.pre_norm.isfinite()`` to skip
    such a step.
    """
    _check_positive(max_norm, "max_norm")
    total = nn.utils.clip_grad_norm_(parameters, max_norm, foreach=foreach)
    # the factor torch applied, computed as torch computes it
    factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    pre = total.float()
    result = ClipResult(pre, (total * factor).float(), torch.full_like(pre, float(max_norm)))
    _record(probe, result)
    return result


def clip_grad_value_(
    parameters: Parameters,
    clip_value: float,
    *,
    foreach: bool | None = None,
    probe: object = None,
) -> ClipResult:
    """Clamp every gradient element to [−clip_value, clip_value]
    (``torch.nn.utils.clip_grad_value_``), with the global norms before and after."""
    _check_positive(clip_value, "clip_value")
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    pre = global_grad_norm(params, foreach=foreach)
    nn.utils.clip_grad_value_(params, clip_value, foreach=foreach)
    post = global_grad_norm(params, foreach=foreach)
    result = ClipResult(pre, post, torch.full_like(pre, float(clip_value)))
    _record(probe, result)
    return result


class AdaptiveClipper:
    """Clip to ``factor`` × the running mean of past gradient norms.

    The running mean is an exponential moving average with weight ``beta`` on the past
    and Adam's bias correction, so early steps average what they have seen. It is fed
    the *post-clip* norm, so that one exploding step does not raise the threshold for the
    steps after it. The first ``warmup`` steps are not clipped (there is no mean yet).
    All state lives on the gradients' device; no host synchronisation.

    Example:
        >>> import torch
        >>> from backprobe.remedies import AdaptiveClipper
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> clipper = AdaptiveClipper(factor=2.0, warmup=1)
        >>> for scale in (1.0, 1.0, 100.0):
        ...     w.grad = torch.tensor([scale, 0.0])
        ...     result = clipper([w])
        >>> float(result.pre_norm), float(result.post_norm)
        (100.0, 2.0)
    """

    def __init__(self, factor: float = 2.0, beta: float = 0.98, warmup: int = 1) -> None:
        _check_positive(factor, "factor")
        if not 0.0 <= beta < 1.0:
            raise RemedyError(f"Expected 0 <= beta < 1 but got {beta!r}.")
        if warmup < 1:
            raise RemedyError(f"Expected warmup >= 1 step but got {warmup!r}.")
        self.factor = float(factor)
        self.beta = float(beta)
        self.warmup = int(warmup)
        self.steps = 0
        self._ema: torch.Tensor | None = None

    @property
    def mean_norm(self) -> torch.Tensor | None:
        """The bias-corrected running mean of post-clip norms (None before the first step)."""
        if self._ema is None:
            return None
        return self._ema / (1.0 - self.beta**self.steps)

    def __call__(
        self, parameters: Parameters, *, foreach: bool | None = None, probe: object = None
    ) -> ClipResult:
        params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        grads = _grads(params)
        pre = global_grad_norm(params, foreach=foreach)
        mean = self.mean_norm  # None before the first step
        if self.steps < self.warmup or mean is None:
            threshold = torch.full_like(pre, float("inf"))
        else:
            threshold = mean * self.factor
        # scale = min(1, threshold / pre) on device, as torch's clip_grad_norm_ does
        coef = torch.clamp(threshold / (pre + 1e-6), max=1.0)
        if grads:
            groups: dict[torch.device, list[torch.Tensor]] = {}
            for g in grads:
                groups.setdefault(g.device, []).append(g)
            for dev, gs in groups.items():
                torch._foreach_mul_(gs, coef.to(dev))
        post = global_grad_norm(params, foreach=foreach)
        # a non-finite step enters the mean as the mean so far, not as inf or nan
        tracked = torch.where(
            torch.isfinite(post), post, torch.zeros_like(pre) if mean is None else mean
        )
        ema = torch.zeros_like(pre) if self._ema is None else self._ema
        self._ema = self.beta * ema + (1.0 - self.beta) * tracked
        self.steps += 1
        result = ClipResult(pre, post, threshold)
        _record(probe, result, threshold=True)
        return result
