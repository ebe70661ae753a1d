"""Rows of the results table read across variants: how far a network still learns.

A sweep's variants differ in one size (a depth, a filler length); on each seed, the
group's *reach* is the largest size at which that seed's test accuracy still reaches a
threshold, and the next size of the grid, where it no longer does, bounds it from above:
the grid's ratio between neighbouring sizes is the resolution of the measurement.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .base import PerSeed, Row, failing_seeds

__all__ = ["reach", "reach_rows"]


def reach(sizes: Sequence[int], accuracies: Sequence[float], threshold: float) -> float:
    """The largest size whose accuracy reaches ``threshold``; NaN if none does."""
    good = [s for s, a in zip(sizes, accuracies, strict=True) if a >= threshold]
    return float(max(good)) if good else math.nan


def _per_seed_reach(
    sizes: Sequence[int], accuracies: Sequence[Sequence[float]], threshold: float
) -> dict[int, float]:
    """Seed → the reach of that seed's runs (seeds that ran every size only)."""
    by_seed = [a.by_seed() if isinstance(a, PerSeed) else dict(enumerate(a)) for a in accuracies]
    seeds = sorted(set.intersection(*(set(b) for b in by_seed)))
    return {s: reach(sizes, [b[s] for b in by_seed], threshold) for s in seeds}


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
    factor: float = 2.0,
) -> list[Row]:
    """One row per group of variants: its reach in ``variants[name][key]``, per seed.

    ``reference`` maps a group to (published value, where from); the verdict then checks,
    seed by seed, that the reach is within ``factor`` of it either way. With a
    reference, a second row gives the reach over the published value."""
    rows = []
    for group, names in groups.items():
        ran = [n for n in names if n in results and "test_accuracy" in results[n]]
        if not ran:
            continue
        sizes = [int(variants[n][key]) for n in ran]
        found = _per_seed_reach(sizes, [results[n]["test_accuracy"] for n in ran], threshold)
        if not found:
            continue
        seeds, values = tuple(found), tuple(found.values())
        top = [str(s) for s, v in found.items() if v == max(sizes)]
        note = (
            f"reaches the largest {key} tried on seed{'s' if len(top) > 1 else ''} "
            f"{', '.join(top)}: a lower bound there"
            if top
            else ""
        )
        ratios = sorted(b / a for a, b in zip(sorted(sizes), sorted(sizes)[1:], strict=False))
        grid = f"{key} {min(sizes)}–{max(sizes)}"
        if ratios:
            grid += f", steps ×{ratios[0]:.2g}–{ratios[-1]:.2g}"
        label = f"{group} ({grid}, accuracy ≥ {threshold:g})"
        if reference is None or group not in reference:
            rows.append(Row(experiment, label, metric, values, seeds, note=note))
            continue
        published, source = reference[group]

        def within(value: float, published: float = published) -> bool:
            return math.isfinite(value) and published / factor <= value <= factor * published

        rows.append(
            Row(
                experiment,
                label,
                metric,
                values,
                seeds,
                reference=f"{published:.3g} ({source}), within ×{factor:g}",
                failing=failing_seeds(values, seeds, within),
                note=note,
            )
        )
        rows.append(
            Row(
                experiment,
                label,
                f"{metric} / {published:.3g}",
                tuple(v / published for v in values),
                seeds,
            )
        )
    return rows
