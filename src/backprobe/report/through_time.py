"""The terminal view of recurrent layers: the gradient through time against its bound.

For one recurrent (sub-)layer at one recorded step, each row is a time step t: the
backward signal ||dL/dh_t|| as a ratio to the last-processed step's (the step nearest a
loss on the final state), drawn on a log scale with Pascanu's bound η^lag marked on the
same bar (η = γ·λ1 of W_hh), and ||dh_T/dh_t||, the part of the state at t that still
reaches the end. The memory horizon is where that falls below 1e-3.
"""

from __future__ import annotations

import math

import numpy as np
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from .._format import compact_number, counted
from ..store.view import HORIZON_THRESHOLD, RunView
from ..theory.bounds import regime_of
from .console import output_console

BAR_WIDTH = 16
#: At most this many time steps are listed; the others are skipped evenly.
MAX_ROWS = 16


def _fmt(value: float) -> str:
    return "" if not np.isfinite(value) else compact_number(value, significant=2)


def _position(value: float, decades: float, width: int) -> int | None:
    """Bar cells for a ratio in (0, 1]: full at 1, one cell at 10^-decades."""
    if not np.isfinite(value) or value <= 0:
        return None
    fill = 1.0 - math.log10(1.0 / min(value, 1.0)) / decades
    return max(1, min(width, round(width * fill)))


def overlay_bar(ratio: float, bound: float, decades: float, width: int = BAR_WIDTH) -> Text:
    """The measured ratio as a bar, with ``┃`` where the bound falls on the same scale
    (red when the measurement exceeds it)."""
    cells = [" "] * width
    filled = _position(ratio, decades, width) or 0
    for i in range(filled):
        cells[i] = "█"
    text = Text("".join(cells), style="cyan")
    mark = _position(bound, decades, width)
    if mark is not None:
        over = np.isfinite(ratio) and ratio > bound * (1 + 1e-6)
        text.stylize("bold red" if over else "bold yellow", mark - 1, mark)
        text.plain = text.plain[: mark - 1] + "┃" + text.plain[mark:]
    return text


def horizon_phrase(horizon: float, length: int) -> str:
    """'13 of 60 steps' or 'longer than the sequence (60 steps)'."""
    if np.isnan(horizon):
        return "not measured"
    if np.isinf(horizon):
        return f"longer than the sequence ({counted(length, 'step')})"
    return f"{horizon:.0f} of {counted(length, 'step')}"


def time_table(run: RunView, name: str, step: int | None = None) -> Group | None:
    """The time-step table of one recurrent (sub-)layer at a recorded step (default: the
    last step with a profile), under its header line and over its legend line; None if it
    has no profile at all. The header and legend are lines of their own, so that they
    wrap at the terminal's width rather than at the narrow table's."""
    profiles = run.time_profile(name)
    rows = np.flatnonzero(~np.isnan(profiles).all(axis=1)) if profiles.size else np.zeros(0, int)
    if step is not None:
        row = run.step_index(step)
        if row not in rows:
            return None
    elif len(rows) == 0:
        return None
    else:
        row = int(rows[-1])
    signal = profiles[row]
    T = int(np.count_nonzero(~np.isnan(signal)))
    signal = signal[:T]
    reverse = name.endswith("_reverse]")
    lag = np.arange(T) if reverse else T - 1 - np.arange(T)
    decay_row = run.jacobian_decay(name)[row]
    decay = decay_row[lag] if decay_row.size >= T else np.full(T, np.nan)
    lam, gamma = run.recurrent_theory(name)[row]
    eta = gamma * lam
    end = signal[0] if reverse else signal[-1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = signal / end
        bound = np.power(eta, lag.astype(float)) if np.isfinite(eta) else np.full(T, np.nan)
    finite = ratio[np.isfinite(ratio) & (ratio > 0)]
    decades = max(2.0, math.ceil(-math.log10(finite.min()))) if finite.size else 2.0
    theory = (
        f"λ1 = {compact_number(lam)}, γ = {compact_number(gamma)}, "
        f"η = γ·λ1 = {compact_number(eta)}: {regime_of(lam, gamma)}"
        if np.isfinite(eta)
        else _gate_phrase(run, name, row)
    )
    heading = Text(f"{name} through time at step {int(run.steps[row])} — {theory}", style="bold")
    legend = Text(
        f"ratio: ||dL/dh_t|| / ||dL/dh_end||, bar over {decades:.0f} decades, ┃ bound η^lag",
        style="dim",
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for header, width in (
        ("t", 3),
        ("lag", 3),
        ("||dL/dh_t||", 8),
        ("ratio", 7),
        ("", BAR_WIDTH),
        ("bound", 7),
        ("dh_T/dh_t", 8),
    ):
        table.add_column(
            header, justify="left" if header == "" else "right", no_wrap=True, min_width=width
        )
    shown = np.unique(np.linspace(0, T - 1, min(T, MAX_ROWS)).round().astype(int))
    for t in shown:
        table.add_row(
            str(t),
            str(lag[t]),
            _fmt(signal[t]),
            _fmt(ratio[t]),
            overlay_bar(ratio[t], bound[t], decades),
            _fmt(bound[t]),
            _fmt(decay[t]),
        )
    return Group(heading, table, legend)


def _gate_phrase(run: RunView, name: str, row: int) -> str:
    """The memory gates of an LSTM / GRU layer, which replace the bound for gated cells."""
    base = name.split("[")[0]
    if base not in run.layers:
        return "gated cell: no bound η^lag"
    column = run.layer_index(base)
    mean = run.history("gate_mean")[row, column]
    open_ = run.history("gate_open")[row, column]
    if np.isnan(mean):
        return "gated cell: no bound η^lag"
    return f"gated: memory gate mean {mean:.2f}, {100 * open_:.0f}% above 0.9 (no bound η^lag)"


def horizon_line(run: RunView, step: int | None = None) -> Text | None:
    """'memory horizon: rnn 13 of 60 steps; …' at a recorded step (default: the last
    with a profile); None for runs without recurrent layers."""
    names = run.recurrent_layers
    if not names:
        return None
    parts = []
    for name in names:
        horizons = run.memory_horizon(name)
        decay = run.jacobian_decay(name)
        measured = np.flatnonzero(~np.isnan(horizons))
        if step is not None:
            row = run.step_index(step)
            measured = measured[measured == row]
        if measured.size == 0:
            continue
        row = int(measured[-1])
        length = int(np.count_nonzero(~np.isnan(decay[row])))
        parts.append(f"{name} {horizon_phrase(horizons[row], length)}")
    if not parts:
        return None
    return Text(
        f"memory horizon (lag where ||dh_T/dh_(T−lag)|| < {HORIZON_THRESHOLD:g}): "
        + "; ".join(parts),
        style="magenta",
    )


def print_time_profiles(run: RunView, step: int | None = None, console: Console | None = None):
    """Print the time-step table of every recurrent (sub-)layer, then the horizon line
    (the only place it is printed: :func:`print_summary` leaves it to this view)."""
    console = console or output_console()
    if not run.recurrent_layers:
        console.print(Text("no time profiles: this run has no probed recurrent layer", style="dim"))
        return
    for name in run.recurrent_layers:
        table = time_table(run, name, step)
        if table is None:
            console.print(Text(f"{name}: no time profile at this step", style="dim"))
        else:
            console.print(table)
    line = horizon_line(run, step)
    if line is not None:
        console.print(line)
