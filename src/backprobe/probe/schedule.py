"""When the probe records: every N-th step, or whenever a callable says so."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ProbeConfigError

Schedule = Callable[[int], bool]


def every_n(n: int) -> Schedule:
    """Record steps 0, n, 2n, …"""

    def schedule(step: int) -> bool:
        return step % n == 0

    schedule.__name__ = f"every_{n}"
    return schedule


def make_schedule(every: int | Schedule) -> Schedule:
    """A schedule from ``every=N`` (N ≥ 1) or a callable ``step -> bool``."""
    if callable(every):
        return every
    if isinstance(every, int) and not isinstance(every, bool) and every >= 1:
        return every_n(every)
    raise ProbeConfigError(
        f"Expected `every` to be a positive int (record every N-th step) or a callable "
        f"step -> bool, but got {every!r}."
    )
