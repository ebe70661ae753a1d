"""Rows of the results table read across variants: how far a network still learns.

A sweep's variants differ in one size (a depth, a filler length); the group's *reach* is
the largest size at which the mean test accuracy over seeds still reaches a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import Row

__all__ = ["reach", "reach_rows"]


def reach(sizes: Sequence[int], accuracies: Sequence[float], threshold: float) -> float:
    """The largest size whose accuracy reaches ``threshold``; NaN if none does."""
    good = [s for s, a in zip(sizes, accuracies, strict=True) if a >= threshold]
    return float(max(good)) if good else math.nan


def reach_rows(
    experiment: str,
    groups: Mapping[str, Sequence[str]],
    variants: Mapping[str, Mapping[str, Any]],  # each variant's config overrides
    results: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    key: str,
    metric: str,
    threshold: float,
    reference: Mapping[str, tuple[float, str]] | None = None,
) -> list[Row]:
    """One row per group of variants: its reach in ``variants[name][key]``.

    ``reference`` maps a group to (published value, where from); the verdict then checks
    the reach is within a factor of 2 of it either way."""
    rows = []
    for group, names in groups.items():
        ran = [n for n in names if n in results and "test_accuracy" in results[n]]
        if not ran:
            continue
        sizes = [int(variants[n][key]) for n in ran]
        accuracy = [float(np.nanmean(results[n]["test_accuracy"])) for n in ran]
        value = reach(sizes, accuracy, threshold)
        text, verdict = "", ""
        if reference is not None and group in reference:
            published, source = reference[group]
            text = f"{published:.3g} ({source}), within ×2"
            ok = math.isfinite(value) and published / 2 <= value <= 2 * published
            verdict = "reproduced" if ok else "not reproduced"
        rows.append(
            Row(
                experiment=experiment,
                variant=f"{group} ({key} {min(sizes)}–{max(sizes)}, accuracy ≥ {threshold:g})",
                metric=metric,
                value=value,
                spread=0.0,
                seeds=min(len(results[n]["test_accuracy"]) for n in ran),
                reference=text,
                verdict=verdict,
            )
        )
    return rows
