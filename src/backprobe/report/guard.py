"""The sentinel and the guard in the report and ``backprobe show``: a line on the
every-step values, and what the guard did (step, action, reason)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._format import compact_number, counted
from ..errors import BackprobeError
from ..store.sentinel import SentinelSeries
from ..store.view import RunView

#: Guard actions listed at most (the count says how many there were).
MAX_ROWS = 20
_ACTIONS = {  # kind: (one, several)
    "skip": ("update skipped", "updates skipped"),
    "clip": ("gradient clipped", "gradients clipped"),
    "scale_lr": ("learning rate lowered", "learning rate lowered"),
}


def _action(kind: str, n: int = 1) -> str:
    one, several = _ACTIONS.get(kind, (kind, kind))
    return one if n == 1 else several


def sentinel_of(run: RunView) -> SentinelSeries:
    """The run's sentinel series; empty for a Probe never attached (nothing to read)."""
    try:
        return run.sentinel
    except BackprobeError:
        return SentinelSeries.empty()


def sentinel_line(run: RunView) -> str | None:
    """'sentinel: every step, 1000 steps (0…999)', or None for a run without one."""
    steps = sentinel_of(run).steps
    if not steps.size:
        return None
    return f"sentinel: every step, {counted(steps.size, 'step')} ({steps[0]}…{steps[-1]})"


def _number(value: object) -> str:
    return compact_number(float(value)) if isinstance(value, int | float) else str(value)


def guard_rows(run: RunView) -> list[dict[str, Any]]:
    """The guard's actions as table rows (step, action, reason, where), first ones first."""
    rows = []
    for event in run.events[:MAX_ROWS]:
        detail = event.detail
        what = _action(event.kind)
        if event.kind == "clip":
            what += f" from {_number(detail.get('from'))} to {_number(detail.get('to'))}"
        elif event.kind == "scale_lr":
            what += f" ×{_number(detail.get('factor'))} until step {detail.get('until')}"
        where = []
        if detail.get("samples"):
            where.append("samples " + ", ".join(str(s) for s in detail["samples"]))
        if detail.get("layers"):
            where.append("layers " + ", ".join(str(n) for n in detail["layers"][:3]))
        rows.append(
            {
                "step": event.step,
                "action": what,
                "reason": str(detail.get("reason", "")),
                "where": "; ".join(where),
            }
        )
    return rows


def guard_heading(run: RunView) -> str | None:
    """'guard: 3 actions (2 updates skipped, 1 gradient clipped)', or None without one."""
    events = run.events
    if not events:
        return None
    kinds: dict[str, int] = {}
    for e in events:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    parts = [f"{n} {_action(k, n)}" for k, n in kinds.items()]
    return f"guard: {counted(len(events), 'action')} ({', '.join(parts)})"


def print_guard(run: RunView, console: Console) -> None:
    """The sentinel line and the guard's actions, for ``backprobe show``."""
    line = sentinel_line(run)
    if line:
        console.print(Text(line, style="dim"))
    heading = guard_heading(run)
    if heading is None:
        return
    table = Table(title=heading, title_justify="left", show_edge=False, pad_edge=False)
    for column in ("step", "action", "reason", "where"):
        table.add_column(column, justify="right" if column == "step" else "left")
    for row in guard_rows(run):
        table.add_row(str(row["step"]), row["action"], row["reason"], row["where"])
    console.print(table)
    if len(run.events) > MAX_ROWS:
        console.print(Text(f"(the first {MAX_ROWS} of {len(run.events)} shown)", style="dim"))
