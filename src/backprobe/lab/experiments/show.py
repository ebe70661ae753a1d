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

__all__ = ["print_experiments", "print_results", "print_rows"]


def _fmt(value: float) -> str:
    """Numbers as the table writes them; NaN (a diverged run) and inf are shown."""
    return "NaN" if math.isnan(value) else compact_number(value)


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
    """The results table of ``backprobe lab table``."""
    if not rows:
        console.print("No lab runs yet: `backprobe lab run NAME` (`backprobe lab list`).")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("experiment", "variant", "metric", "value", "seeds", "published", "verdict"):
        table.add_column(
            header,
            justify="right" if header in ("value", "seeds") else "left",
            overflow="fold",
        )
    for r in rows:
        value = _fmt(r.value)
        if r.seeds > 1 and math.isfinite(r.spread):
            value += f" ± {compact_number(r.spread, significant=2)}"
        style = {"reproduced": "green", "not reproduced": "red"}.get(r.verdict, "")
        table.add_row(
            r.experiment,
            escape(r.variant),
            r.metric,
            value,
            str(r.seeds),
            escape(r.reference),
            f"[{style}]{r.verdict}[/{style}]" if style else r.verdict,
        )
    console.print(table)
