"""The terminal summary: a per-layer table with log-scale bars, and the verdict.

The bars are the seeds' "long network" picture drawn in a terminal: each layer's
parameter-gradient norm on a log scale, so that a factor of 10⁻⁹ between the first and
the last layer is as visible as a factor of 2.
"""

from __future__ import annotations

import math

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._format import compact_number
from ..diagnose.verdict import Verdict, verdict
from ..store.view import LayerInfo, RunView
from .console import output_console
from .through_time import horizon_line

BAR_WIDTH = 12
_STYLE = {
    "healthy": "green",
    "vanishing": "yellow",
    "exploding": "yellow",
    "misconfigured": "yellow",
    "nonfinite": "bold red",
    "unknown": "dim",
}


def _fmt(value: float, kind: str = "g") -> str:
    """Short numbers for narrow terminals: ``0.123``, ``4.5e-9``, ``93%``."""
    if value is None or np.isnan(value):
        return ""
    if kind == "%":
        return f"{100 * value:.0f}%"
    if kind == "int":
        return f"{value:.0f}"
    return compact_number(value, significant=2 if kind == ".2g" else 3)


def log_span(values: np.ndarray) -> tuple[float, float]:
    """(top, decades): the largest positive finite value and how many decades the bars
    span, at least 2 so that a healthy profile does not look dramatic."""
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return 0.0, 2.0
    top = float(positive.max())
    return top, max(2.0, math.ceil(math.log10(top / float(positive.min()))))


def log_bar(value: float, top: float, decades: float, width: int = BAR_WIDTH) -> str:
    """A bar whose length is linear in log10(value), full at ``top``."""
    if not np.isfinite(value) or value <= 0 or top <= 0:
        return "·" if value == 0 else ""
    fill = 1.0 - math.log10(top / value) / decades
    return "█" * max(1, round(width * fill))


def summary_table(run: RunView, step: int | None = None, params_only: bool = False) -> Table:
    """The per-layer table of one recorded step (default: the last).

    Columns: gradient norm with its log bar, gradient-to-weight ratio (the update scale
    per unit learning rate), gain of the backward signal through the layer, output std,
    saturated (sigmoid/tanh family) or dead (ReLU family) fraction, non-finite samples.
    """
    row = run.step_index(step)
    at = int(run.steps[row])
    stats = {
        name: run.history(name)[row]
        for name in (
            "grad_norm",
            "grad_to_weight",
            "gain",
            "act_std",
            "saturated",
            "dead",
            "nonfinite",
        )
    }
    top, decades = log_span(stats["grad_norm"])
    table = Table(
        title=f"gradient flow at step {at}",
        title_justify="left",
        caption=f"bar: log10 gradient norm over {decades:.0f} decades, full = {_fmt(top)}",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for header, width in (
        ("#", 3),
        ("layer", None),
        ("grad", 7),
        ("", BAR_WIDTH),
        ("grad/w", 7),
        ("gain", 5),
        ("std", 5),
        ("sat/dead", 3),
        ("nan", 3),
    ):
        # the layer name wraps when the table is too wide: numbers are never cut
        table.add_column(
            header,
            justify="left" if header in ("layer", "") else "right",
            no_wrap=header != "layer",
            min_width=width,
            overflow="crop" if width else "fold",
        )
    for layer in run.layer_info:
        i = layer.index
        if params_only and np.isnan(stats["grad_norm"][i]):
            continue
        label = Text(layer.name)
        label.append(f" {layer.type}" + role_marks(layer), style="dim")
        fraction = (
            stats["saturated"][i]
            if layer.family and not np.isnan(stats["saturated"][i])
            else stats["dead"][i]
        )
        nonfinite = stats["nonfinite"][i]
        table.add_row(
            str(i),
            label,
            _fmt(stats["grad_norm"][i]),
            Text(log_bar(stats["grad_norm"][i], top, decades), style="cyan"),
            _fmt(stats["grad_to_weight"][i]),
            _fmt(stats["gain"][i], ".2g"),
            _fmt(stats["act_std"][i], ".2g"),
            _fmt(fraction, "%"),
            Text(_fmt(nonfinite, "int"), style="bold red" if nonfinite > 0 else ""),
        )
    return table


def verdict_text(v: Verdict) -> Text:
    return Text(f"verdict: {v.message}", style=_STYLE[v.status])


def role_marks(layer: LayerInfo) -> str:
    """What a layer table adds after a layer's type (the terminal's and the report's): frozen,
    a residual block (its stream), parameters only, did not run, tied to another layer."""
    marks = [" frozen"] if layer.frozen else []
    if layer.role == "block":
        marks.append(" [block]")
    elif layer.role == "params":
        marks.append(" [params]")
    if not layer.ran:
        marks.append(" did not run")
    if layer.shared_with:
        marks.append(f" tied to {layer.shared_with}")
    return "".join(marks)


def print_summary(
    run: RunView,
    step: int | None = None,
    console: Console | None = None,
    title: str | None = None,
    params_only: bool = False,
    horizon: bool = True,
) -> Verdict:
    """Print the table and the verdict of a recorded step, and (``horizon``) the memory
    horizon of its recurrent layers; return the verdict. ``horizon=False`` when the
    through-time view follows, which ends with the same line. Without ``console``, the
    terminal, or a wide page in a pipe or log file (:func:`output_console`)."""
    console = console or output_console()
    if title:
        console.print(Text(title, style="bold"))
    console.print(summary_table(run, step, params_only))
    v = verdict(run, step)
    console.print(verdict_text(v))
    line = horizon_line(run, step) if horizon else None
    if line is not None:
        console.print(line)
    return v


_SEVERITY_STYLE = {"info": "dim", "warning": "yellow", "error": "bold red"}


def _evidence_text(value: object) -> str | None:
    """A short rendering of one evidence value; None for nested values (dicts)."""
    if isinstance(value, bool) or value is None:
        return None if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return compact_number(value, significant=3)
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and len(value) <= 6:
        parts = [_evidence_text(v) for v in value]
        return "[" + ", ".join(p if p is not None else "–" for p in parts) + "]"
    return None


def print_findings(findings: list, console: Console | None = None, verbose: bool = True) -> None:
    """Print findings (``bp.Finding``), most severe first as given: severity and summary,
    then (``verbose``) the cause, the scalar evidence, ranked remedies and references."""
    console = console or output_console()
    if not findings:
        console.print(Text("no findings: nothing above the thresholds", style="green"))
        return
    for f in findings:
        line = Text(f"[{f.severity}] ", style=_SEVERITY_STYLE.get(f.severity, ""))
        line.append(f"{f.kind}: ", style="bold")
        line.append(f.summary)
        console.print(line)
        if not verbose:
            continue
        if f.cause:
            console.print(Text(f"    why: {f.cause}"))
        shown = [
            f"{k}={text}" for k, v in f.evidence.items() if (text := _evidence_text(v)) is not None
        ]
        if shown:
            console.print(Text(f"    evidence: {', '.join(shown)}", style="dim"))
        for rank, remedy in enumerate(f.remedies, 1):
            console.print(Text(f"    {rank}. {remedy.title}: ", style="cyan").append(remedy.call))
            if remedy.effect:
                console.print(Text(f"       measured on a copy: {remedy.effect}", style="green"))
        if f.references:
            console.print(Text(f"    see: {'; '.join(f.references)}", style="dim"))
    if verbose and any(r.call.startswith("backprobe.") for f in findings for r in f.remedies):
        console.print(
            Text(
                "the calls assume: import torch, backprobe.remedies; from torch import nn",
                style="dim",
            )
        )
