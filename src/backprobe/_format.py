"""Numbers that span dozens of decades, written short for a terminal."""

from __future__ import annotations

import math


def compact_number(value: float, significant: int = 3, exponent_decimals: int = 1) -> str:
    """``0.0753`` between 1e-2 and 1e3 (and for 0), else ``2.0e-18``: a short exponent with
    no sign padding or leading zeros. Non-finite values are written as Python does."""
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-2 <= abs(value) < 1e3:
        return f"{value:.{significant}g}"
    mantissa, exponent = f"{value:.{exponent_decimals}e}".split("e")
    return f"{mantissa}e{int(exponent)}"
