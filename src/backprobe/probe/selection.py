"""Which modules of a model the probe watches, and what kind of activation each one is.

By default the probe watches every module that owns parameters directly (``nn.Linear``,
``nn.Conv2d``, ``nn.LayerNorm``, a custom module with an ``nn.Parameter`` of its own, …)
and every activation module (``nn.Sigmoid``, ``nn.ReLU``, …). Containers such as
``nn.Sequential`` are not layers: their children are.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import ProbeConfigError

UnsupportedMode = Literal["ignore", "warn", "error"]
UNSUPPORTED_MODES: tuple[str, ...] = ("ignore", "warn", "error")

#: Activation modules probed by default. Softmax-like modules normalise rather than
#: activate, and are left out.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Softsign,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Hardswish,
    nn.LogSigmoid,
    nn.Tanhshrink,
    nn.Softshrink,
    nn.Hardshrink,
    nn.Threshold,
    nn.GLU,
)

#: A unit's derivative below this fraction of the activation's maximum derivative counts
#: as saturated.
SATURATION_FRACTION = 0.01


@dataclass(frozen=True)
class Saturation:
    """Saturated outputs of a bounded activation are those with ``|y - center| > half_width``.

    Derived from the output alone, so that in-place activations and activations whose
    input is gone still work. ``inclusive`` counts ``|y - center| == half_width`` too: a
    hard clamp's output sits exactly on its bound when saturated.
    """

    center: float
    half_width: float
    inclusive: bool = False


@dataclass(frozen=True)
class ActivationFamily:
    """What the probe measures on an activation's output besides mean and std.

    ``saturation`` is set for bounded activations (sigmoid, tanh, hard-tanh family),
    ``can_die`` for the ReLU family, whose units can output zero for a whole batch.
    """

    name: str
    saturation: Saturation | None = None
    can_die: bool = False


def activation_family(module: nn.Module) -> ActivationFamily | None:
    """The family of an activation module, or ``None`` when saturation and death don't apply.

    Thresholds follow from the derivative written in terms of the output ``y``:
    sigmoid ``y(1-y)`` (max 1/4), tanh ``1-y²`` (max 1), softsign ``(1-|y|)²`` (max 1),
    hard-tanh and hard-sigmoid 0 on their flat parts.
    """
    f = SATURATION_FRACTION
    if isinstance(module, nn.ReLU6):  # a Hardtanh subclass, but a ReLU in spirit
        return ActivationFamily("relu6", can_die=True)
    if isinstance(module, nn.ReLU):
        return ActivationFamily("relu", can_die=True)
    if isinstance(module, nn.Sigmoid):
        return ActivationFamily("sigmoid", Saturation(0.5, math.sqrt(0.25 - 0.25 * f)))
    if isinstance(module, nn.Tanh):
        return ActivationFamily("tanh", Saturation(0.0, math.sqrt(1.0 - f)))
    if isinstance(module, nn.Softsign):
        return ActivationFamily("softsign", Saturation(0.0, 1.0 - math.sqrt(f)))
    if isinstance(module, nn.Hardtanh):
        lo, hi = float(module.min_val), float(module.max_val)
        return ActivationFamily("hardtanh", Saturation((lo + hi) / 2, (hi - lo) / 2, True))
    if isinstance(module, nn.Hardsigmoid):
        return ActivationFamily("hardsigmoid", Saturation(0.5, 0.5, True))
    return None


def owns_parameters(module: nn.Module) -> bool:
    """Whether the module has parameters of its own (not counting its children's)."""
    return any(True for _ in module.parameters(recurse=False))


def is_default_layer(module: nn.Module) -> bool:
    """A module the probe watches when no ``include`` is given."""
    return owns_parameters(module) or isinstance(module, ACTIVATION_TYPES)


def is_unsupported(module: nn.Module) -> bool:
    """Modules whose hooks PyTorch does not run (TorchScript) cannot be probed."""
    return isinstance(module, torch.jit.ScriptModule)


LayerFilter = str | type[nn.Module] | Sequence[str | type[nn.Module]] | None


def _as_filters(spec: LayerFilter) -> tuple[list[str], list[type[nn.Module]]]:
    if spec is None:
        return [], []
    single = isinstance(spec, (str, type)) or not isinstance(spec, Iterable)
    items: Iterable = [spec] if single else spec
    patterns: list[str] = []
    types: list[type[nn.Module]] = []
    for item in items:
        if isinstance(item, str):
            patterns.append(item)
        elif isinstance(item, type) and issubclass(item, nn.Module):
            types.append(item)
        else:
            raise ProbeConfigError(
                "Expected layer filters to be name patterns (str, e.g. 'encoder.*') or "
                f"nn.Module subclasses (e.g. nn.Linear), but got {item!r}."
            )
    return patterns, types


def _matches(name: str, module: nn.Module, patterns: list[str], types: list[type]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns) or isinstance(module, tuple(types))


def select_layers(
    model: nn.Module, include: LayerFilter = None, exclude: LayerFilter = None
) -> list[tuple[str, nn.Module]]:
    """The ``(qualified name, module)`` pairs to probe, in registration order.

    ``include`` and ``exclude`` take glob patterns on qualified names (``"blocks.*.mlp"``)
    and module types; a module is probed when it matches ``include`` (or, without
    ``include``, is a default layer) and does not match ``exclude``. The root module, when
    it is a layer, is named after its class.

    Raises ProbeConfigError when nothing is selected, naming some of what was there.
    """
    inc_patterns, inc_types = _as_filters(include)
    exc_patterns, exc_types = _as_filters(exclude)
    named = list(model.named_modules())
    chosen: list[tuple[str, nn.Module]] = []
    for name, module in named:
        if include is None:
            wanted = is_default_layer(module)
        else:
            wanted = _matches(name, module, inc_patterns, inc_types)
        if wanted and not _matches(name, module, exc_patterns, exc_types):
            chosen.append((name or type(module).__name__, module))
    if not chosen:
        candidates = [n for n, m in named if n and is_default_layer(m)][:8]
        raise ProbeConfigError(
            f"The layer filter (include={include!r}, exclude={exclude!r}) matched no module "
            f"of this {type(model).__name__}. Expected glob patterns on qualified names or "
            f"module types; some probe-able names here: {candidates or 'none'}."
        )
    return chosen
