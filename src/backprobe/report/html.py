"""The HTML report: one self-contained file per run, or per pair of runs side by side.

The page carries everything inside it: figures as base64 PNG, styles in one ``<style>``
block, no script, no font or stylesheet from the network, so it opens the same from a
laptop, a CI artifact or an e-mail. Every string that comes from the user or the model
(run and layer names, finding texts) goes through jinja2's autoescaping.

It reads only the run's read API (a Probe or a stored run, also one whose process was
killed), so a report can be rebuilt from the run database alone.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._format import compact_number, counted
from .._version import __version__
from ..diagnose.rules import diagnose
from ..errors import BackprobeError, ReportPathError
from .guard import guard_heading, guard_rows, sentinel_line, sentinel_of
from .recording import measurement_lines, schedule_line
from .text import log_span, role_marks

if TYPE_CHECKING:
    import jinja2
    from matplotlib.figure import Figure

    from ..diagnose.finding import Finding
    from ..store.view import RunView

#: What each figure shows, by key (recurrent keys by their prefix before ':').
CAPTIONS = {
    "compare": "Gradient flow of the compared runs at their last recorded step, log scale: "
    "the parameter-gradient norm of each layer that owns parameters.",
    "compare_loss": "Loss of the compared runs over their recorded steps.",
    "loss": "Loss over the recorded steps; dashed lines mark the steps of findings.",
    "gradient_flow": "Gradient flow: each layer's parameter-gradient norm at a few steps, "
    "log scale. A line falling toward the input is a vanishing gradient; rising, exploding.",
    "heatmap": "Parameter-gradient norm per layer (rows, input at top) and step (columns), "
    "log colour scale.",
    "gain": "Per-layer gain of the backward signal: the chain rule's local factor. Their "
    "product over the layers is how much of the gradient reaches the input.",
    "saturation": "Saturated units (sigmoid / tanh family, derivative below 1 % of its "
    "maximum) and dead units (ReLU family, zero for the whole batch) at the last step.",
    "time_profile": "‖dL/dh_t‖ through time: how much gradient reaches the state at each time "
    "step; dashed, the Hochreiter / Pascanu bound (γ·λ1)^(T−t) from the last step back.",
    "jacobian_decay": "‖dh_T/dh_k‖ against the lag T − k: how much of a change of the state "
    "k steps back still reaches the end. Dotted verticals: the memory horizon.",
    "jacobian_spectrum": "Singular values of the Jacobian, largest first; green: the "
    "isometry band where the gradient is neither shrunk nor stretched.",
}
#: Length in pixels of a full log bar in the per-layer table.
BAR_PX = 80
#: Figures drawn for a notebook cell (``_repr_html_``): the quick ones.
NOTEBOOK_FIGURES = ("loss", "gradient_flow")


def _num(value: Any) -> str:
    """Numbers spanning decades, short: ``0.0753``, ``2.0e-18``; blank for None / NaN."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else compact_number(float(value))
    return str(value)


def _evidence_value(value: Any) -> str:
    """A finding's evidence value as text: numbers short, lists joined."""
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
        shown = ", ".join(_num(v) for v in items[:12])
        return shown + (f", … ({len(items)} in all)" if len(items) > 12 else "")
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_evidence_value(v)}" for k, v in value.items())
    return _num(value)


@cache
def _template() -> jinja2.Template:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    source = resources.files(__package__).joinpath("templates", "report.html.j2")
    return env.from_string(source.read_text(encoding="utf-8"))


def _png(fig: Figure) -> str:
    from .figures import png_bytes

    return base64.b64encode(png_bytes(fig, dpi=110)).decode("ascii")


def _figure_entry(key: str, fig: Figure) -> dict[str, str]:
    kind, _, layer = key.partition(":")
    caption = CAPTIONS.get(kind, "")
    if layer:
        caption = f"{layer}: {caption}"
    return {"png": _png(fig), "alt": key, "caption": caption}


# ---------------------------------------------------------------------------- one run


def _finding_entry(f: Finding) -> dict[str, Any]:
    where = "; ".join(f"{k}: {_evidence_value(v)}" for k, v in (f.where or {}).items())
    if f.step is not None and "step" not in (f.where or {}):
        where = f"step {f.step}" + (f"; {where}" if where else "")
    return {
        "severity": f.severity,
        "kind": f.kind,
        "summary": f.summary,
        "where": where,
        "cause": f.cause,
        # a value with nothing to show (None, NaN, an empty list) makes no chip
        "evidence": [
            (str(k), text) for k, v in (f.evidence or {}).items() if (text := _evidence_value(v))
        ],
        "remedies": [
            {"title": m.title, "call": m.call, "why": m.why, "effect": m.effect} for m in f.remedies
        ],
        "references": list(f.references),
    }


def _layer_rows(run: RunView, row: int) -> tuple[list[dict[str, Any]], float, float]:
    """The per-layer table at one recorded step, and the log-bar span (top, decades)."""
    stats = {
        s: run.history(s)[row]
        for s in ("grad_norm", "grad_to_weight", "gain", "act_std", "saturated", "dead")
    }
    nonfinite = run.history("nonfinite")[row]
    top, decades = log_span(stats["grad_norm"])
    rows = []
    for layer in run.layer_info:
        i = layer.index
        grad = stats["grad_norm"][i]
        bar = None
        if np.isfinite(grad) and grad > 0 and top > 0:
            bar = round(BAR_PX * max(0.02, 1 - math.log10(top / grad) / decades), 1)
        sat = stats["saturated"][i]
        fraction = sat if layer.family and not np.isnan(sat) else stats["dead"][i]
        bad = nonfinite[i]
        rows.append(
            {
                "index": i,
                "name": layer.name,
                "type": layer.type + role_marks(layer),
                "grad": _num(grad),
                "bar": bar,
                "grad_to_weight": _num(stats["grad_to_weight"][i]),
                "gain": _num(stats["gain"][i]),
                "std": _num(stats["act_std"][i]),
                "fraction": "" if np.isnan(fraction) else f"{100 * fraction:.0f}%",
                "nonfinite": "" if np.isnan(bad) or bad == 0 else f"{bad:.0f}",
            }
        )
    return rows, top, decades


def _recurrent_rows(run: RunView) -> list[dict[str, Any]]:
    """Per recurrent (sub-)layer, at its last step with a profile: sequence length, memory
    horizon, λ1 of W_hh and γ·λ1 (blank for gated cells)."""
    rows = []
    for name in run.recurrent_layers:
        decay = run.jacobian_decay(name)
        recorded = (
            np.flatnonzero(np.isfinite(decay).any(axis=1)) if decay.size else np.zeros(0, int)
        )
        if not len(recorded):
            continue
        at = int(recorded[-1])
        horizon = run.memory_horizon(name)[at]
        lam, gamma = run.recurrent_theory(name)[at]
        length = int(np.isfinite(decay[at]).sum())
        rows.append(
            {
                "name": name,
                "step": int(run.steps[at]),
                "length": length,
                "horizon": f"beyond {counted(length, 'step')}"
                if np.isinf(horizon)
                else _num(horizon),
                "lambda1": _num(lam),
                "eta": _num(lam * gamma),
            }
        )
    return rows


def _recorded_steps(run: RunView) -> np.ndarray:
    """The run's recorded steps; none for a Probe that was never attached (which has no
    run to read yet and says so by raising)."""
    try:
        return run.steps
    except BackprobeError:
        return np.zeros(0, dtype=np.int64)


def _describe(run: RunView) -> tuple[str, str, str | None]:
    """(title, metadata line, notice) of a Probe or a stored run."""
    name = str(getattr(run, "name", type(run).__name__))
    run_id = run.run_id
    title = f"run {run_id}: {name}" if run_id is not None else name
    status = getattr(run, "status", None)
    if status is None:  # a live Probe
        db = getattr(run, "db", None)
        status = "live probe, " + ("in memory" if db is None else f"run database {db}")
    steps = _recorded_steps(run)
    parts = [status, counted(steps.size, "recorded step")]
    if steps.size:
        parts.append(f"steps {int(steps[0])}…{int(steps[-1])}")
    parts.append(counted(len(run.layers), "layer"))
    schedule = schedule_line(run)
    if schedule:
        parts.append(schedule)
    parts.extend(measurement_lines(run))
    line = sentinel_line(run)
    if line:
        parts.append(line)
    info = getattr(run, "info", None)
    if info is not None:
        started = dt.datetime.fromtimestamp(info.created).strftime("%Y-%m-%d %H:%M:%S")
        parts.append(f"started {started}")
    notice = None
    if status == "interrupted":
        notice = (
            "The training process ended without closing this run (killed or lost). The "
            "report shows everything it recorded up to its last flush."
        )
    elif status == "failed":
        error = getattr(info, "error", None) if info is not None else None
        notice = "The training ended with an error" + (f": {error}" if error else ".")
    return title, " · ".join(parts), notice


def run_context(
    run: RunView,
    include: Sequence[str] | None = None,
    extra_figures: dict[str, Figure] | None = None,
    findings: Sequence[Finding] | None = None,
) -> dict[str, Any]:
    """Everything the template shows about one run, as plain strings and numbers.
    ``findings``: shown instead of the run's own diagnosis (:func:`diagnose`)."""
    from ..diagnose.depth import first_to_last_ratio
    from ..diagnose.verdict import verdict_of
    from .figures import run_figures

    title, meta, notice = _describe(run)
    recorded = _recorded_steps(run).size > 0
    if not recorded and not len(sentinel_of(run)):
        findings = None
    elif findings is None:
        findings = diagnose(run)
    else:
        findings = sorted(findings, key=lambda f: -f.severity_rank)
    context: dict[str, Any] = {
        "title": title,
        "meta": meta,
        "notice": notice,
        "findings": None if findings is None else [_finding_entry(f) for f in findings],
        "table": [],
        "recurrent": [],
        "figures": [],
        "guard_heading": guard_heading(run) if len(sentinel_of(run)) else None,
        "guard": guard_rows(run) if len(sentinel_of(run)) else [],
    }
    if not recorded:
        context.update(verdict="no recorded step yet: nothing to judge", verdict_status="unknown")
        return context
    v = verdict_of(findings or (), int(run.steps[-1]), run.layers, first_to_last_ratio(run))
    context.update(verdict=v.message, verdict_status=v.status)
    row = run.steps.size - 1
    table, top, decades = _layer_rows(run, row)
    context.update(table=table, table_step=int(run.steps[row]), top=_num(top))
    context["decades"] = f"{decades:.0f}"
    context["recurrent"] = _recurrent_rows(run)
    figures = run_figures(run, findings or (), include=include)
    figures.update(extra_figures or {})
    context["figures"] = [_figure_entry(k, f) for k, f in figures.items()]
    return context


# ------------------------------------------------------------------------------ the page


def _as_runs(runs: RunView | Sequence[RunView]) -> list[RunView]:
    from ..store.view import RunView

    listed = [runs] if isinstance(runs, RunView) else list(runs)
    if not listed or not all(isinstance(r, RunView) for r in listed):
        raise BackprobeError(
            "Expected a run (a Probe or bp.open_run(db, run)) or a list of runs to report on, "
            f"but got {type(runs).__name__}."
        )
    return listed


def _comparison(runs: list[RunView]) -> list[dict[str, str]]:
    """The overlay figures of the compared runs: last-step gradient flow, and loss."""
    from .figures import compare_flow_figure, compare_loss_figure

    profiles, losses = {}, {}
    for run in runs:
        if _recorded_steps(run).size:
            title, _, _ = _describe(run)
            profiles[title] = (run.layers, run.history("grad_norm")[-1])
            losses[title] = (run.steps, run.history("loss"))
    if len(profiles) < 2:
        return []
    return [
        _figure_entry("compare", compare_flow_figure(profiles)),
        _figure_entry("compare_loss", compare_loss_figure(losses)),
    ]


def render_report(
    runs: RunView | Sequence[RunView],
    *,
    fragment: bool = False,
    include: Sequence[str] | None = None,
    extra_figures: dict[str, Figure] | None = None,
    findings: Sequence[Finding] | None = None,
) -> str:
    """The report of one run, or of several side by side, as HTML text.

    ``runs``: a Probe or stored run, or a list of them (compared in columns, with their
    gradient flows overlaid in one figure). ``fragment=True`` gives a ``<div>`` for a
    notebook cell instead of a whole page. ``include`` keeps only those figures (keys of
    :func:`backprobe.report.figures.run_figures`); ``extra_figures`` adds figures by key
    to a single run's report (e.g. ``{"jacobian_spectrum": jacobian_spectrum_figure(…)}``).
    ``findings`` replaces a single run's own diagnosis (e.g. findings made with other
    thresholds: ``bp.findings(run, thresholds=…)``).
    """
    listed = _as_runs(runs)
    for option, value in (("extra_figures", extra_figures), ("findings", findings)):
        if value is not None and len(listed) > 1:
            raise BackprobeError(
                f"Expected {option} with a single run, but got several runs; report the run "
                f"the {option.replace('_', ' ')} belong to on its own."
            )
    contexts = [run_context(r, include, extra_figures, findings) for r in listed]
    heading = "backprobe report: " + " vs ".join(c["title"] for c in contexts)
    return _template().render(
        runs=contexts,
        heading=heading,
        comparison=_comparison(listed) if len(listed) > 1 else [],
        fragment=fragment,
        version=__version__,
    )


def write_report(
    runs: RunView | Sequence[RunView],
    path: str | Path = "report.html",
    **options: Any,
) -> Path:
    """Write :func:`render_report` to ``path`` (folders created); returns the path.

    A folder, or a path on read-only storage, is refused before anything is drawn."""
    path = Path(path)
    if path.is_dir():
        raise ReportPathError(f"{path} is a folder; expected an HTML file name, e.g. report.html.")
    with _writing_to(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(f"the folder {path.parent} is not writable")
    text = render_report(runs, **options)
    with _writing_to(path):
        path.write_text(text, encoding="utf-8")
    return path


@contextmanager
def _writing_to(path: Path) -> Iterator[None]:
    """An OSError (read-only storage, no permission) as a one-line error naming the path."""
    try:
        yield
    except OSError as exc:
        raise ReportPathError(
            f"Cannot write the report to {path}: {exc.strerror or exc}. Expected a path on "
            "writable storage; give another file name."
        ) from exc
