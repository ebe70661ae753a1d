"""What the framework tests share: counting the hooks left on a model."""

from __future__ import annotations

from torch import nn


def hook_count(model: nn.Module) -> int:
    """Every hook on ``model``'s modules (forward, forward-pre, backward, backward-pre)
    and on its parameters (gradient hooks): a probe detached leaves none of its own."""
    on_modules = sum(
        len(hooks)
        for m in model.modules()
        for hooks in (
            m._forward_hooks,
            m._forward_pre_hooks,
            m._backward_hooks,
            m._backward_pre_hooks,
        )
    )
    return on_modules + sum(len(p._backward_hooks or {}) for p in model.parameters())
