"""Numbers that span dozens of decades, written short for a terminal, and counted nouns."""

from __future__ import annotations

import math


def compact_number(value: float, significant: int = 3, exponent_decimals: int = 1) -> str:
    """``0.0753`` between 1e-2 and 1e3 (and for 0), else ``2.0e-18``: a short exponent with
    no sign padding or leading zeros. A value in range with more integer digits than
    ``significant`` (470 at 2) is written ``4.7e2`` too, never Python's ``4.7e+02``.
    Non-finite values are written as Python does."""
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-2 <= abs(value) < 1e3:
        plain = f"{value:.{significant}g}"
        if "e" not in plain:
            return plain
        exponent_decimals = min(exponent_decimals, significant - 1)
    mantissa, exponent = f"{value:.{exponent_decimals}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``1 step``, ``3 steps``, ``0 findings``: the count with its noun, singular for 1
    (``plural`` where adding "s" is wrong)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
