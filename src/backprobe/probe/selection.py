"""Which modules of a model the probe watches, and what kind of activation each one is.

By default the probe watches every module that owns parameters directly (``nn.Linear``,
``nn.Conv2d``, ``nn.LayerNorm``, a custom module with an ``nn.Parameter`` of its own, …)
and every activation module the activation table knows (``nn.Sigmoid``, ``nn.ReLU``,
Hugging Face's ``GELUActivation``, …). Containers such as
``nn.Sequential`` are not layers: their children are.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..activations import ACTIVATION_KINDS, Saturation, activation_kind
from ..errors import ProbeConfigError

UnsupportedMode = Literal["ignore", "warn", "error"]
UNSUPPORTED_MODES: tuple[str, ...] = ("ignore", "warn", "error")

#: Activation modules probed by default: torch's activation classes in the table
#: (:mod:`backprobe.activations`), which also recognises Hugging Face and timm classes.
#: Softmax-like modules normalise rather than activate, and are left out.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = tuple(
    cls for kind in ACTIVATION_KINDS if kind.nonlinear for cls in kind.modules
)


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

    Read from the activation table: the saturation thresholds there follow from the
    derivative written in terms of the output, a clamp's from its own bounds.
    """
    kind = activation_kind(module)
    if kind is None:
        return None
    saturation = kind.saturation_of(module)
    if saturation is None and not kind.can_die:
        return None
    return ActivationFamily(kind.name, saturation, kind.can_die)


def is_activation(module: nn.Module) -> bool:
    """Whether the activation table knows the module as a (non-identity) activation."""
    kind = activation_kind(module)
    return kind is not None and kind.nonlinear


def owns_parameters(module: nn.Module) -> bool:
    """Whether the module has parameters of its own (not counting its children's)."""
    return any(True for _ in module.parameters(recurse=False))


def is_default_layer(module: nn.Module) -> bool:
    """A module the probe watches when no ``include`` is given."""
    return owns_parameters(module) or is_activation(module)


def is_unsupported(module: nn.Module) -> bool:
    """Modules whose hooks PyTorch does not run (TorchScript) cannot be probed."""
    return isinstance(module, torch.jit.ScriptModule)


LayerFilter = str | type[nn.Module] | Sequence[str | type[nn.Module]] | None


def _as_filters(spec: LayerFilter) -> tuple[list[str], list[type[nn.Module]]]:
    if spec is None:
        return [], []
    items: Iterable[object] = (
        [spec] if isinstance(spec, (str, type)) or not isinstance(spec, Iterable) else spec
    )
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


def filter_matches(name: str, module: nn.Module, spec: LayerFilter) -> bool:
    """Whether a module matches an ``include``/``exclude`` filter (``None`` matches none)."""
    return _matches(name, module, *_as_filters(spec))


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
