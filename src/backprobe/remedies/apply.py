"""Apply a finding's remedy to a model in place: the one place that runs remedy actions.

A machine-applicable remedy (``bp.Remedy`` with an ``action``) names ``backprobe.remedies``
calls on the model and their keyword arguments, e.g. ``(("init_", {"scheme":
"he_normal"}),)``; :func:`apply_remedy` runs them in order. A remedy without an action is
advice for the training loop or the architecture (clipping, the optimizer, skip
connections, normalisation layers) and is refused with a :class:`RemedyError` that says
to apply its call by hand. An activation swap that finds no module to swap is refused
too, so that a remedy never silently does nothing.

Example:
    >>> import torch
    >>> from torch import nn
    >>> import backprobe as bp
    >>> from backprobe.remedies import apply_remedy
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    >>> remedy = bp.Remedy.applying("ReLU + He init", "ReLU's derivative is 1.",
    ...     ("swap_activations_", {"from_": "tanh", "to": "relu"}),
    ...     ("init_", {"scheme": "he_normal"}))
    >>> for step in remedy.call.split("; "):
    ...     print(step)
    backprobe.remedies.swap_activations_(model, from_="tanh", to="relu")
    backprobe.remedies.init_(model, scheme="he_normal")
    >>> apply_remedy(model, remedy)
    >>> model[1]
    ReLU()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from torch import nn

from ..errors import RemedyError
from .activations import SwapReport, swap_activations_
from .init import init_

__all__ = ["APPLICABLE", "Applicable", "apply_remedy"]

#: The functions a remedy's action may name, by name; each takes the model first.
APPLICABLE: Mapping[str, Callable[..., object]] = {
    "init_": init_,
    "swap_activations_": swap_activations_,
}


class Applicable(Protocol):
    """What :func:`apply_remedy` reads of a remedy (``bp.Remedy`` has it)."""

    @property
    def title(self) -> str: ...

    @property
    def call(self) -> str: ...

    @property
    def action(self) -> tuple[tuple[str, dict[str, Any]], ...]: ...


def apply_remedy(model: nn.Module, remedy: Applicable) -> None:
    """Run ``remedy``'s action on ``model``, in place, step by step.

    Raises:
        RemedyError: the remedy is advice only (no action), names a function that is
            not in :data:`APPLICABLE`, or its step does not apply to this model (a swap
            of an activation the model does not have, an init the model's layers refuse).
    """
    if not remedy.action:
        raise RemedyError(
            f"Expected a remedy with an action to apply to the model, but "
            f"{remedy.title!r} is advice for the training loop or the architecture; "
            f"apply it by hand: {remedy.call}"
        )
    for name, kwargs in remedy.action:
        function = APPLICABLE.get(name)
        if function is None:
            raise RemedyError(
                f"Expected a remedy action naming one of {sorted(APPLICABLE)}, but "
                f"{remedy.title!r} names {name!r}; apply it by hand: {remedy.call}"
            )
        done = function(model, **kwargs)
        if isinstance(done, SwapReport) and not done.swapped:
            raise RemedyError(
                f"Expected {kwargs.get('from_')!r} activation modules in the model to swap "
                f"for {remedy.title!r}, but it has none; the remedy does not apply to it."
            )
