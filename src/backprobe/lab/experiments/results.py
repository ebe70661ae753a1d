"""``make results``: run the lab's experiments and write ``docs/results.md``.

    python -m backprobe.lab.experiments.results --run all --jobs 2 \\
        --db backprobe-runs/results.db --out docs/results.md

``--run`` names the experiments to (re)run first, with their full configuration and
their own number of seeds (``--quick`` for the CI-sized ones), all their runs in one
pool of ``--jobs`` worker processes, the longest first (``--resume``: less the runs the
database already holds finished with the same config); the page is then written from
the run database alone (``--run`` with no names: only the page), so that runs made by hand
(``backprobe lab run``) count too. Every row gives the mean and range over its seeds,
on how many seeds the published direction holds, and the command that made its runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.console import Console

from ...report.figures import save
from ...store import RunDatabase, open_run
from .base import Experiment, Row
from .registry import experiments, get_experiment
from .runner import Job, plan, run_jobs
from .show import VERDICT_MARK, value_text, verdict_text
from .table import collect, results_rows

__all__ = ["draw_figure", "main", "markdown", "ordered_jobs", "write_results"]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(rows: Sequence[Row]) -> str:
    """The rows as one GitHub markdown table."""
    lines = [
        "| experiment | variant | metric | mean (min–max) | seeds | s / run | published "
        "| holds on | command |",
        "|---|---|---|---:|---|---:|---|---|---|",
    ]
    for r in rows:
        seconds = f"{r.seconds:.0f}" if math.isfinite(r.seconds) else ""
        seeds = ", ".join(str(s) for s in r.seed_ids)
        command = f"`{r.command}`" if r.command else ""
        lines.append(
            f"| {r.experiment} | {_cell(r.variant)} | {_cell(r.metric)} "
            f"| {_cell(value_text(r))} | {seeds} "
            f"| {seconds} | {_cell(r.reference)} | {verdict_text(r)} | {_cell(command)} |"
        )
    return "\n".join(lines) + "\n"


def _claims(rows: Sequence[Row]) -> str:
    """The checked claims, counted by verdict, and every one that does not hold on all
    seeds by name."""
    checked = [r for r in rows if r.verdict]
    counts = {v: sum(r.verdict == v for r in checked) for v in VERDICT_MARK}
    lines = [
        f"{len(checked)} published direction{'s' if len(checked) != 1 else ''} checked, "
        "each on every seed: "
        f"{counts['reproduced']} hold on all seeds, {counts['partly reproduced']} on some, "
        f"{counts['not reproduced']} on none."
    ]
    for r in checked:
        if r.verdict != "reproduced":
            lines.append(
                f"- {VERDICT_MARK[r.verdict]} **{r.experiment}** {r.variant}: {r.metric} "
                f"{value_text(r)}, expected {r.reference} — {r.holds_on}"
            )
    return "\n".join(lines)


def _wall_time(db: Path) -> str:
    """When the stored lab runs ran: first start to last end, and their summed time."""
    runs = collect(db)
    if not runs:
        return ""
    start = min(r.created for r in runs)
    end = max(r.created + r.seconds for r in runs if math.isfinite(r.seconds))
    total = sum(r.seconds for r in runs if math.isfinite(r.seconds))
    day = dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"The {len(runs)} stored runs started at {day} and ended {(end - start) / 60:.0f} "
        f"minutes later; together they ran {total / 60:.0f} minutes (runs in parallel "
        "overlap)."
    )


def draw_figure(experiment: Experiment, db: Path, folder: Path) -> Path | None:
    """Draw ``experiment``'s paper figure from each variant's newest seed-0 run in
    ``db`` into ``folder/<name>.png``; None when it has no figure or a variant has no
    such run."""
    if experiment.figure is None:
        return None
    names = {v: f"lab/{experiment.name}/{v}/s0" for v in experiment.variants}
    with RunDatabase(db, read_only=True) as database:
        stored = {r.name for r in database.runs()}
    if not set(names.values()) <= stored:
        return None
    runs = {v: open_run(db, name) for v, name in names.items()}
    return save(experiment.figure(runs), folder / f"{experiment.name}.png")


def write_results(db: Path, out: Path, note: str = "") -> Path:
    """Write the results page for every experiment with runs in ``db``; ``note`` is a
    paragraph put under the introduction (how the runs were made, what is missing)."""
    rows = results_rows(db)
    by_experiment: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_experiment[row.experiment].append(row)
    machine = (
        f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads available (each run uses one)"
    )
    sections = []
    for e in experiments():
        mine = by_experiment.get(e.name)
        head = f"## {e.name}\n\n{e.title}."
        if e.note:
            head += f" *Configuration:* {e.note}"
        if not mine:
            sections.append(f"{head}\n\n*No runs stored yet.*\n")
            continue
        section = f"{head}\n\n{markdown(mine)}"
        drawn = draw_figure(e, db, out.parent / "images")
        if drawn is not None:
            section += f"\n![{e.name}](images/{drawn.name})\n\n*{e.caption}*\n"
        sections.append(section)
    body = "\n".join(sections)
    text = f"""# Lab results

Generated by `make results` on {dt.date.today().isoformat()} ({machine}) from the run
database `{db.name}`: every number is the final value of a stored run, every run is
stored with its configuration (`backprobe runs`, `backprobe show`). Each row is one
metric over the seeds it names: the mean and, in brackets, the range (min–max) over
those seeds. "published" is the direction a paper reports, with the table or figure that
reports it (full citations in [references.md](references.md)); "holds on" says on how
many seeds the measured value satisfies it (✅ all, ⚠️ some, naming the seeds where it
fails, ❌ none). "command" reruns the row's runs (`--db` to store them elsewhere). A
variant marked *(quick)* ran its CI-sized configuration: a direction only. `s / run` is
the wall time of one run, probe included, on a machine shared with other work.
{note and chr(10) + note + chr(10)}
{_wall_time(db)}

{_claims(rows)}

{body}"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


def _cost(job: Job) -> float:
    """A rough relative cost of a run, to start the longest first: steps times the
    sequence length or depth it unrolls (gated cells and Ω cost more)."""
    c = job.config
    span = max([float(c.get(k) or 0) for k in ("length", "depth", "filler", "delay")] + [1.0])
    factor = {"lstm": 2.0, "gru": 3.0}.get(str(c.get("cell")), 1.0)
    factor *= 4.0 if float(c.get("omega") or 0) > 0 else 1.0
    return float(c.get("steps") or 1) * span * factor


def ordered_jobs(
    names: Sequence[str], quick: bool, db: Path | None, resume: bool = False
) -> list[Job]:
    """Every run of the experiments ``names`` with their own seeds, longest first; with
    ``resume``, less those ``db`` already holds finished with the same profile and
    config (the page takes them as the newest invocation's, see ``table``)."""
    planned = [
        job
        for name in names
        for job in plan(get_experiment(name), seeds=get_experiment(name).seeds, quick=quick, db=db)
    ]
    if resume and db is not None and db.exists():
        done = {
            (r.experiment, r.variant, r.seed, r.profile, json.dumps(r.config, sort_keys=True))
            for r in collect(db)
        }
        planned = [
            j
            for j in planned
            if (j.experiment, j.variant, j.seed, j.profile, json.dumps(j.config, sort_keys=True))
            not in done
        ]
    return sorted(planned, key=_cost, reverse=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("backprobe-runs/results.db"))
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument(
        "--run", nargs="*", default=[], help="experiments to run first ('all' for every one)"
    )
    parser.add_argument("--quick", action="store_true", help="run the quick configurations")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip runs the database holds finished with the same config",
    )
    parser.add_argument("--note", default="", help="a paragraph for the page's introduction")
    args = parser.parse_args(argv)
    names = [e.name for e in experiments()] if "all" in args.run else list(args.run)
    console = Console()
    if names:
        jobs = ordered_jobs(names, args.quick, args.db, resume=args.resume)
        console.print(f"{len(jobs)} runs of {', '.join(names)}, {args.jobs} at a time")
        run_jobs(jobs, jobs=args.jobs, console=console, live=False, keep_going=True)
    path = write_results(args.db, args.out, args.note)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
