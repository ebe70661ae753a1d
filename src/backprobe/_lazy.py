"""Names a package imports on first use (PEP 562), so that importing it stays cheap:
``import backprobe`` loads no torch, ``import backprobe.integrations`` no framework."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence

#: Where a lazy name lives: a module relative to the package that defines it under the
#: same name, or ``(module, name there)``.
Where = str | tuple[str, str]


def lazy_names(
    package: str, table: Mapping[str, Where], public: Sequence[str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the package named ``package`` (its
    ``__name__``, called from its ``__init__``): a name of ``table`` is imported when
    first asked for and kept in the package's namespace; ``dir()`` lists ``public``."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> object:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        where = table[name]
        module, attribute = where if isinstance(where, tuple) else (where, name)
        value = getattr(importlib.import_module(module, package), attribute)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
