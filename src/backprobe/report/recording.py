"""How a run was recorded: its schedule, the overhead the probe measured, and how each
kind of statistic was measured (full batch or a sub-batch), for ``show`` and the report."""

from __future__ import annotations

import numpy as np

from ..errors import BackprobeError
from ..store.view import RunView


def measured_overhead(run: RunView, series: str = "overhead") -> float | None:
    """An overhead the probe measured (``series``: recording's, or the sentinel's
    ``"sentinel_overhead"``), at its last recorded step where it had (a fraction of the
    training time), None when the run holds none."""
    try:
        values = run.history(series).ravel()
    except BackprobeError:  # a probe with nothing recorded yet
        return None
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else None


def schedule_line(run: RunView) -> str | None:
    """'schedule budget 2%, measured overhead 1.8 % + sentinel 2.4 %', or None when the
    run says neither."""
    every = run.probe_config.get("every")
    overhead = measured_overhead(run)
    sentinel = measured_overhead(run, "sentinel_overhead")
    parts = []
    if every:
        parts.append(f"schedule {every}")
    if overhead is not None:
        measured = f"measured overhead {100 * overhead:.1f} %"
        if sentinel is not None:
            measured += f" + sentinel {100 * sentinel:.1f} % (every step)"
        parts.append(measured)
    elif sentinel is not None:
        parts.append(f"measured sentinel overhead {100 * sentinel:.1f} % (every step)")
    return ", ".join(parts) or None


def measurement_lines(run: RunView) -> list[str]:
    """'layer statistics: full batch, …' per kind of statistic the run says it measured."""
    measured = run.probe_config.get("measured") or {}
    return [f"{kind}: {how}" for kind, how in measured.items()]
