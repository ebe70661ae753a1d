"""``--set key=value``: typed overrides of an experiment's config dataclass.

Every value is parsed by the type of its field: ``int`` (``--set steps=2000``), ``float``
(``lr=1e-3``), ``bool`` (``true/false/yes/no/1/0``), ``str``, a ``Literal`` (one of its
values), or any of these ``| None`` (``none``), and a number must lie within its
setting's bounds (:mod:`~backprobe.lab.experiments.bounds`: ``steps`` > 0, ``lr`` > 0,
``momentum`` in [0, 1), …). Unknown keys, values of the wrong type and values out of
bounds are user errors, raised before any run starts, that name the field, what it
accepts and the accepted keys.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args, get_origin

from ...errors import LabConfigError
from .bounds import bounds_of

__all__ = ["describe_setting", "describe_type", "make_config", "parse_settings"]

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def _field_types(cls: type) -> dict[str, Any]:
    """The type of each field of the config dataclass ``cls`` (class attributes such as
    its ``bounds`` are no settings)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _options(tp: Any) -> tuple[list[Any], bool]:
    """The member types of a union (or ``[tp]``) and whether None is one of them."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        members = list(get_args(tp))
        return [m for m in members if m is not type(None)], type(None) in members
    return [tp], False


def describe_type(tp: Any) -> str:
    """``int``, ``float | None``, ``one of 'rnn', 'lstm'``: for help and errors."""
    members, optional = _options(tp)
    parts = []
    for m in members:
        if get_origin(m) is Literal:
            parts.append("one of " + ", ".join(repr(v) for v in get_args(m)))
        else:
            parts.append(getattr(m, "__name__", str(m)))
    return " | ".join(parts) + (" | none" if optional else "")


def describe_setting(cls: type, name: str) -> str:
    """A setting's type and bounds: ``int > 0``, ``float in [0, 1) | none``."""
    tp = _field_types(cls)[name]
    bound = bounds_of(cls).get(name)
    if bound is None:
        return describe_type(tp)
    members, optional = _options(tp)
    numbers = " | ".join(getattr(m, "__name__", str(m)) for m in members)
    return f"{numbers} {bound}" + (" | none" if optional else "")


def _within_bounds(cls: type, key: str, value: Any) -> bool:
    """Whether a parsed ``value`` of setting ``key`` is finite and within its bounds (a
    non-number, None included, has none to check)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return True
    bound = bounds_of(cls).get(key)
    return math.isfinite(value) if bound is None else bound.holds(value)


def _parse_one(tp: Any, text: str) -> Any:
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError
    if tp is int:
        return int(text.strip().replace("_", ""))
    if tp is float:
        return float(text)
    if tp is str:
        return text
    if get_origin(tp) is Literal:
        for choice in get_args(tp):
            if str(choice) == text.strip():
                return choice
        raise ValueError
    raise ValueError


def _parse(tp: Any, text: str) -> Any:
    members, optional = _options(tp)
    if optional and text.strip().lower() in ("none", "null"):
        return None
    for m in members:
        try:
            return _parse_one(m, text)
        except ValueError:
            continue
    raise ValueError


def parse_settings(cls: type, settings: Sequence[str], experiment: str = "") -> dict[str, Any]:
    """``["lr=0.01", "cell=lstm"]`` → ``{"lr": 0.01, "cell": "lstm"}``, typed by ``cls``.

    Raises:
        LabConfigError: a setting without ``=``, an unknown key, or a value that its
            field's type or bounds do not accept.
    """
    hints = _field_types(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    where = f" of experiment {experiment!r}" if experiment else ""
    parsed: dict[str, Any] = {}
    for item in settings:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise LabConfigError(f"Expected a setting as key=value, got {item!r}.")
        if key not in hints:
            raise LabConfigError(
                f"Unknown setting {key!r}{where}; expected one of {', '.join(sorted(hints))} "
                "(`backprobe lab list --settings` shows them with their types)."
            )
        try:
            value = _parse(hints[key], text)
        except ValueError:
            expected = describe_type(hints[key])
        else:
            if _within_bounds(cls, key, value):
                parsed[key] = value
                continue
            expected = describe_setting(cls, key)
        raise LabConfigError(
            f"Setting {key}{where} expects {expected}, got {text!r}; pass such a value, or "
            f"leave it out for the default {defaults[key]!r}."
        )
    return parsed


def make_config(cls: type, *layers: Mapping[str, Any]) -> Any:
    """An instance of the config dataclass ``cls``: its defaults, then each mapping of
    overrides in turn (later ones win)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(merged) - known
    if unknown:
        raise LabConfigError(f"Unknown settings {sorted(unknown)} for {cls.__name__}.")
    return cls(**merged)
