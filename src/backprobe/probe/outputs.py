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
    seen: set[int] = set()

    def visit(obj: object) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point():
                found.append(obj)
        elif isinstance(obj, (tuple, list)):
            for item in obj:
                visit(item)
        elif isinstance(obj, Mapping):
            for item in obj.values():
                visit(item)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                visit(getattr(obj, f.name))

    visit(output)
    return found
