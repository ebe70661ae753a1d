"""Finding the tensors in whatever a module's forward returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch


def floating_tensors(output: object) -> list[torch.Tensor]:
    """Floating-point tensors in a forward's output, depth first, in order.

    Understands tensors, tuples and lists (named tuples and ``PackedSequence`` too),
    mappings (Hugging Face ``ModelOutput`` is one) and dataclasses. The first tensor is the
    layer's *primary output*, the one whose activation statistics are recorded.
    """
    found: list[torch.Tensor] = []
    _collect(output, found, set())
    return found


def _collect(obj: object, found: list[torch.Tensor], seen: set[int]) -> None:
    """Append the floating-point tensors in ``obj`` to ``found``. A module-level function,
    not a closure calling itself: such a closure is a reference cycle that would keep
    every output it saw alive until the garbage collector runs (or forever with it off)."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            found.append(obj)
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            _collect(item, found, seen)
    elif isinstance(obj, Mapping):
        for item in obj.values():
            _collect(item, found, seen)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _collect(getattr(obj, f.name), found, seen)
