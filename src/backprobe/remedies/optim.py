"""Torch optimisers and learning-rate schedulers from a short spec string.

The seeds' remedies include momentum, Adam, Adagrad and learning-rate decay; PyTorch has
them all, so nothing is re-implemented here. A spec names one so that an experiment, a
CLI option or a finding can say exactly what to use::

    "sgd:lr=0.1,momentum=0.9"        torch.optim.SGD(params, lr=0.1, momentum=0.9)
    "adam:lr=1e-3,betas=0.9/0.98"    torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.98))
    "step:size=10,gamma=0.5"         torch.optim.lr_scheduler.StepLR(opt, step_size=10, …)

Grammar: ``name[:key=value[,key=value…]]``. Names are case-insensitive; optimisers are
looked up in ``torch.optim`` (``sgd``, ``adam``, ``adamw``, ``adagrad``, ``rmsprop``, …)
and schedulers in ``torch.optim.lr_scheduler`` (``steplr`` or the short ``step``,
``exponential``, ``cosine``, ``multistep``, ``plateau``, …). Values are parsed as Python
literals (numbers, ``True``/``False``, ``None``); ``a/b/c`` is a tuple. Short keys:
``size`` → ``step_size``, ``milestones`` accepts ``5/10``. Unknown names and keys are
refused with the accepted ones listed.

Example:
    >>> import torch
    >>> from backprobe.remedies import build_optimizer, build_scheduler
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = build_optimizer("sgd:lr=0.1,momentum=0.9", model.parameters())
    >>> type(opt).__name__, opt.defaults["momentum"]
    ('SGD', 0.9)
    >>> sched = build_scheduler("step:size=10,gamma=0.5", opt)
    >>> type(sched).__name__, sched.step_size
    ('StepLR', 10)
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch

from ..errors import RemedyError

#: What a spec builds: a ``torch.optim`` optimiser or learning-rate scheduler.
_Built = TypeVar("_Built")

__all__ = ["build_optimizer", "build_scheduler", "parse_spec"]

_SCHEDULER_ALIASES = {
    "step": "StepLR",
    "multistep": "MultiStepLR",
    "exponential": "ExponentialLR",
    "exp": "ExponentialLR",
    "cosine": "CosineAnnealingLR",
    "plateau": "ReduceLROnPlateau",
    "linear": "LinearLR",
    "onecycle": "OneCycleLR",
    "constant": "ConstantLR",
}
_KEY_ALIASES = {"size": "step_size", "wd": "weight_decay"}


def _value(text: str) -> object:
    if "/" in text:
        return tuple(_value(part) for part in text.split("/"))
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: a string option such as mode=min


def parse_spec(spec: str) -> tuple[str, dict[str, object]]:
    """``"adam:lr=1e-3,betas=0.9/0.98"`` → ``("adam", {"lr": 0.001, "betas": (0.9, 0.98)})``."""
    if not isinstance(spec, str) or not spec.strip():
        raise RemedyError(
            f"Expected a spec like 'adam:lr=1e-3' but got {spec!r}; name[:key=value,…]."
        )
    name, _, rest = spec.strip().partition(":")
    kwargs: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise RemedyError(
                f"Expected key=value in spec {spec!r} but got {item!r}; e.g. 'sgd:lr=0.1'."
            )
        key = _KEY_ALIASES.get(key.strip(), key.strip())
        kwargs[key] = _value(value.strip())
    return name.strip().lower(), kwargs


def _lookup(
    module: object, name: str, base: type[_Built], what: str, aliases: dict[str, str]
) -> type[_Built]:
    classes = {
        n.lower(): c
        for n, c in vars(module).items()
        if inspect.isclass(c) and issubclass(c, base) and c is not base and not n.startswith("_")
    }
    key = aliases.get(name, name).lower()
    if key not in classes:
        raise RemedyError(
            f"Expected a {what} name, one of {sorted([*classes, *aliases])}, but got {name!r}."
        )
    return classes[key]


def _build(cls: type[_Built], first: object, kwargs: dict[str, object], spec: str) -> _Built:
    params = inspect.signature(cls).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        accepted = [k for k in params if k not in ("self", "params", "optimizer")]
        raise RemedyError(
            f"Expected options of {cls.__name__} ({', '.join(accepted)}) but spec {spec!r} "
            f"has {unknown}."
        )
    try:
        build: Callable[..., _Built] = cls  # its constructor, whose options were checked above
        return build(first, **kwargs)
    except (TypeError, ValueError) as exc:
        raise RemedyError(f"{cls.__name__} refused spec {spec!r}: {exc}") from exc


def build_optimizer(
    spec: str, params: Iterable[torch.Tensor] | Iterable[dict]
) -> torch.optim.Optimizer:
    """A ``torch.optim`` optimiser over ``params`` from a spec such as ``"adam:lr=1e-3"``."""
    name, kwargs = parse_spec(spec)
    cls = _lookup(torch.optim, name, torch.optim.Optimizer, "torch.optim optimiser", {})
    return _build(cls, params, kwargs, spec)


def build_scheduler(
    spec: str, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    """A ``torch.optim.lr_scheduler`` scheduler of ``optimizer`` from a spec such as
    ``"step:size=10,gamma=0.5"`` or ``"cosine:T_max=100"``."""
    name, kwargs = parse_spec(spec)
    if "milestones" in kwargs and not isinstance(kwargs["milestones"], (tuple, list)):
        kwargs["milestones"] = (kwargs["milestones"],)
    sched = torch.optim.lr_scheduler
    cls = _lookup(
        sched, name, sched.LRScheduler, "torch.optim.lr_scheduler scheduler", _SCHEDULER_ALIASES
    )
    return _build(cls, optimizer, kwargs, spec)
