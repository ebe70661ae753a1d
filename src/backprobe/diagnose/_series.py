"""Small numeric helpers shared by the rules: robust summaries over recorded steps."""

from __future__ import annotations

import math
import warnings

import numpy as np

from .._format import compact_number


def typical(values: np.ndarray) -> np.ndarray:
    """Median over recorded steps (axis 0) of ``values`` [S, ...], ignoring NaN: one
    bad step neither hides nor invents a problem. All-NaN columns stay NaN."""
    if values.shape[0] == 0:
        return np.full(values.shape[1:], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        return np.nanmedian(values, axis=0)


def log_ratio(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """log10(values / reference) per element; 0/x = −inf, x/0 = +inf, NaN where either
    is NaN or both are 0 (no ratio)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(values) - np.log10(reference)
    return out


def leading_run(bad: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Indices of the unbroken run of ``bad`` entries among the ``measured`` ones that
    starts at the first measured entry (the input end); empty when that one is fine."""
    idx = np.flatnonzero(measured)
    run = []
    for i in idx:
        if not bad[i]:
            break
        run.append(int(i))
    return np.asarray(run, dtype=np.int64)


def fmt(value: float) -> str:
    """A ratio or statistic for a sentence: ``3e-9``, ``0.42``, ``0 (underflow)``."""
    if value == 0:
        return "0 (underflow)"
    if 1e-2 <= abs(value) < 1e3:
        return f"{value:.3g}"
    return compact_number(float(value), significant=2, exponent_decimals=0)


def span(names: list[str]) -> str:
    """``fc1`` / ``fc1, act1`` / ``fc1 … act38 (76 layers)``."""
    if len(names) <= 2:
        return ", ".join(names)
    return f"{names[0]} … {names[-1]} ({len(names)} layers)"


def clean(value: float) -> float | None:
    """A number for ``Finding.evidence`` (JSON): float, or None for NaN."""
    value = float(value)
    return None if math.isnan(value) else value
