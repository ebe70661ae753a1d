"""Swap the activation modules of an existing model, and say which ones cannot be swapped.

A sigmoid's derivative is at most 1/4, so a chain of them shrinks the gradient by 4 per
layer at best (the seeds' 50-layer network); ReLU's derivative is 1 where it is active.
:func:`swap_activations_` replaces every ``from_`` module (``isinstance``, so subclasses
too), at any depth of nesting, by a fresh ``to`` module, in place.

Activations *called* inside a ``forward`` (``torch.sigmoid(x)``, ``F.sigmoid(x)``,
``x.sigmoid()``) are no modules and cannot be replaced from outside. They are found by
reading the source of the ``forward`` of every model class that is not PyTorch's own
(``inspect.getsource``) for the names the activation table gives them, and reported with
file and line, and a warning is issued.

Decision: source inspection rather than ``torch.fx`` tracing, because tracing fails on
the data-dependent control flow that ordinary models have and would then report nothing,
while reading the source works for every Python ``forward`` and points to the exact line
the user has to edit. Its limit: a call through an alias it cannot see (``act = torch.
sigmoid`` then ``act(x)``) or in a helper defined elsewhere is not reported; a class
whose source is not available (defined in a REPL) is listed in
:attr:`SwapReport.unreadable`.

Example:
    >>> from torch import nn
    >>> from backprobe.remedies import swap_activations_
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(),
    ...                       nn.Sequential(nn.Linear(4, 4), nn.Sigmoid()))
    >>> report = swap_activations_(model, from_=nn.Sigmoid, to=nn.ReLU)
    >>> report.swapped
    ['1', '2.1']
    >>> model[2][1]
    ReLU()
"""

from __future__ import annotations

import copy
import inspect
import re
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..activations import activation_kind
from ..errors import RemedyError

__all__ = ["FunctionalCall", "SwapReport", "swap_activations_"]


@dataclass(frozen=True)
class FunctionalCall:
    """An activation called inside a ``forward``: where, and the line of code."""

    module: str  # qualified name of the module whose forward calls it ("" for the root)
    cls: str
    file: str
    line: int
    code: str


@dataclass
class SwapReport:
    """What :func:`swap_activations_` did.

    ``swapped``: qualified names of the replaced modules, in model order. ``functional``:
    calls it could not replace. ``unreadable``: classes whose forward source is not
    available, so they could not be checked.
    """

    swapped: list[str] = field(default_factory=list)
    functional: list[FunctionalCall] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def _make(to: type[nn.Module] | nn.Module | Callable[[], nn.Module]) -> nn.Module:
    if isinstance(to, nn.Module):
        return copy.deepcopy(to)
    made = to()
    if not isinstance(made, nn.Module):
        raise RemedyError(
            f"Expected `to` to build an nn.Module (a class such as nn.ReLU, an instance, or a "
            f"factory) but it returned {type(made).__name__}."
        )
    return made


def _pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    alt = "|".join(re.escape(n) for n in names)
    # torch.sigmoid(, F.sigmoid(, torch.nn.functional.sigmoid(, x.sigmoid(), x.sigmoid_(),
    # a bare sigmoid( imported by name; not self.sigmoid(, a module attribute being called
    return re.compile(rf"(?:(?<!\bself)\.|(?<![\w.]))(?:{alt})_?\s*\(")


def _find_calls(
    model: nn.Module, names: tuple[str, ...], report: SwapReport
) -> list[FunctionalCall]:
    pattern = _pattern(names)
    found: list[FunctionalCall] = []
    checked: set[type] = set()
    for qual, module in model.named_modules():
        cls = type(module)
        if cls.__module__.startswith("torch.") or cls in checked:
            continue
        checked.add(cls)
        forward = cls.forward
        try:
            lines, start = inspect.getsourcelines(forward)
            file = inspect.getsourcefile(forward) or "?"
        except (OSError, TypeError):
            report.unreadable.append(cls.__qualname__)
            continue
        source = textwrap.dedent("".join(lines)).splitlines()
        for offset, text in enumerate(source):
            code = text.split("#", 1)[0]
            if pattern.search(code):
                found.append(FunctionalCall(qual, cls.__qualname__, file, start + offset, text))
    return found


def _classes_of(name: str, role: str) -> tuple[type[nn.Module], ...]:
    """The torch module classes of the activation table's record ``name``."""
    kind = activation_kind(name)
    if kind is None or not kind.modules:
        raise RemedyError(
            f"Expected {role} to name an activation with a torch module class (sigmoid, "
            f"tanh, relu, leaky_relu, gelu, …) but got {name!r}; pass the class itself."
        )
    return kind.modules


def _from_types(from_: object) -> tuple[type[nn.Module], ...]:
    """``from_`` as a tuple of module classes: names are looked up in the table."""
    given = tuple(from_) if isinstance(from_, tuple | list) else (from_,)
    types: list[type[nn.Module]] = []
    for item in given:
        if isinstance(item, str):
            types.extend(_classes_of(item, "from_"))
        elif isinstance(item, type) and issubclass(item, nn.Module):
            types.append(item)
        else:
            raise RemedyError(
                f"Expected from_ to be an nn.Module class (e.g. nn.Sigmoid), an activation "
                f"name ('sigmoid') or a tuple of them but got {from_!r}."
            )
    if not types:
        raise RemedyError("Expected from_ to name at least one activation but got none.")
    return tuple(types)


ActivationClasses = type[nn.Module] | str | tuple[type[nn.Module] | str, ...]


def swap_activations_(
    model: nn.Module,
    from_: ActivationClasses = nn.Sigmoid,
    to: type[nn.Module] | nn.Module | Callable[[], nn.Module] | str = nn.ReLU,
    *,
    warn: bool = True,
) -> SwapReport:
    """Replace every ``from_`` activation module of ``model`` by a new ``to`` module.

    Args:
        model: changed in place (children are re-assigned on their parents).
        from_: a module type (or tuple of types) to replace; matched with ``isinstance``.
            An activation name (``"tanh"``, as :mod:`backprobe.activations` names them)
            stands for that activation's torch classes.
        to: a module class (called without arguments), a factory, an instance (each
            replacement gets a deep copy), or an activation name (``"relu"``).
        warn: issue a ``UserWarning`` listing functional calls that were not swapped.

    Returns:
        :class:`SwapReport`. The model's parameters are untouched: re-initialise for the
        new activation afterwards (``init_(model, "he_normal")`` for ReLU).
    """
    types = _from_types(from_)
    if isinstance(to, str):
        to = _classes_of(to, "to")[0]
    if isinstance(model, types):
        raise RemedyError(
            f"Expected a model that contains {types[0].__name__} modules but got one itself; "
            f"build the replacement directly."
        )
    report = SwapReport()
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    for qual, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, types):
                setattr(parent, child_name, _make(to))
                report.swapped.append(f"{qual}.{child_name}" if qual else child_name)
    # model order (a shared module reached by a second name goes last)
    report.swapped.sort(key=lambda name: order.get(name, len(order)))
    names = tuple(
        n for t in types if (kind := activation_kind(t)) is not None for n in kind.call_names
    )
    if names:
        report.functional = _find_calls(model, names, report)
    if warn and report.functional:
        where = "; ".join(
            f"{c.cls}.forward line {c.line}: {c.code.strip()}" for c in report.functional
        )
        warnings.warn(
            f"{len(report.functional)} functional activation call(s) cannot be swapped from "
            f"outside: {where}. Replace them by a module attribute in the forward.",
            stacklevel=2,
        )
    return report
