"""Terminal output of ``backprobe lab``: the list of experiments, a run's results, the
results table."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..._format import compact_number
from .base import Experiment, Row
from .runner import JobResult
from .settings import describe_setting

__all__ = [
    "VERDICT_MARK",
    "print_experiments",
    "print_results",
    "print_rows",
    "value_text",
    "verdict_text",
]


def _fmt(value: float) -> str:
    """Numbers as the table writes them; NaN (a diverged run) and inf are shown."""
    return "NaN" if math.isnan(value) else compact_number(value)


VERDICT_MARK = {
    "reproduced": "✅",
    "partly reproduced": "⚠️",
    "not reproduced": "❌",
}


def value_text(row: Row) -> str:
    """``mean (min–max)`` over the seeds; the row's note where no seed measured a value;
    seeds whose value is NaN (a diverged run) are counted out loud."""
    if row.note and all(math.isnan(v) for v in row.values):
        return row.note
    mean, low, high = row.value, row.low, row.high
    reach = "depth" in row.metric or "filler" in row.metric  # NaN: no size reached
    if math.isnan(mean):
        return "none" if reach else "NaN (diverged)"
    text = _fmt(mean)
    if row.seeds > 1 and math.isfinite(low) and low != high:
        text += f" ({_fmt(low)}–{_fmt(high)})"
    nan = sum(math.isnan(v) for v in row.values)
    if nan:
        text += f", {'none' if reach else 'NaN'} on {nan} seed{'s' if nan > 1 else ''}"
    if row.note:
        text += f"; {row.note}"
    return text


def verdict_text(row: Row) -> str:
    """The verdict and on how many seeds it holds: "✅ reproduced, 3/3 seeds", "⚠️
    partly reproduced, 2/3: fails on seed 1", "❌ not reproduced, 0/3 seeds"; "" when
    nothing published is checked."""
    if not row.verdict:
        return ""
    return f"{VERDICT_MARK[row.verdict]} {row.verdict}, {row.holds_on}"


def print_experiments(
    console: Console, items: Sequence[Experiment], settings: bool = False
) -> None:
    """One line per experiment (name, variants, title); with ``settings`` every config
    field with its type, full default and quick value."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("experiment", no_wrap=True)
    table.add_column("runs", justify="right")
    table.add_column("what it shows", overflow="fold")
    for e in items:
        table.add_row(e.name, str(len(e.variants)), e.title)
    console.print(table)
    if not settings:
        console.print("`backprobe lab list --settings` shows every experiment's settings.")
        return
    for e in items:
        t = Table(title=e.name, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for header in ("setting", "type", "full", "quick"):
            t.add_column(header)
        for f in dataclasses.fields(e.config):
            quick = e.quick.get(f.name, "")
            t.add_row(
                f.name, escape(describe_setting(e.config, f.name)), str(f.default), str(quick)
            )
        console.print(t)
        console.print("variants: " + ", ".join(e.variants))


def print_results(console: Console, experiment: Experiment, results: Sequence[JobResult]) -> None:
    """What each run of an invocation measured, its main metrics and wall time."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=experiment.name, title_justify="left")
    for header in ("variant", "seed", *experiment.metrics, "seconds"):
        table.add_column(header, justify="left" if header == "variant" else "right")
    for r in results:
        values = [_fmt(r.metrics[m]) if m in r.metrics else "—" for m in experiment.metrics]
        table.add_row(r.job.variant, str(r.job.seed), *values, f"{r.seconds:.1f}")
    console.print(table)


def print_rows(console: Console, rows: Sequence[Row]) -> None:
    """The results table of ``backprobe lab table``: mean (min–max) over seeds and on how
    many seeds the published direction holds."""
    if not rows:
        console.print("No lab runs yet: `backprobe lab run NAME` (`backprobe lab list`).")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("experiment", "variant", "metric", "mean (range)", "seeds", "published",
                   "holds on"):  # fmt: skip
        table.add_column(
            header,
            justify="right" if header in ("mean (range)", "seeds") else "left",
            overflow="fold",
            no_wrap=header == "variant",
        )
    for r in rows:
        style = {"reproduced": "green", "partly reproduced": "yellow"}.get(r.verdict, "red")
        table.add_row(
            r.experiment,
            escape(r.variant),
            escape(r.metric),
            escape(value_text(r)),
            str(r.seeds),
            escape(r.reference),
            f"[{style}]{r.verdict}, {escape(r.holds_on)}[/{style}]" if r.verdict else "",
        )
    console.print(table)
