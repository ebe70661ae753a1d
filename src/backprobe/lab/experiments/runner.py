"""``backprobe lab run``: every (variant, seed) of an experiment, in this process or in
``jobs`` worker processes, with one live progress bar per run.

Workers are spawned (not forked: a forked PyTorch with live threads can deadlock), each
with one intra-op thread, and send their progress through a queue; the run database is
shared (SQLite in WAL mode serialises the writers).
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import queue
import shlex
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ...errors import LabConfigError
from ..training import lab_threads
from .base import Experiment, RunContext
from .registry import get_experiment
from .settings import make_config, parse_settings

__all__ = ["Job", "JobResult", "lab_command", "plan", "run_experiment", "run_jobs"]


@dataclass(frozen=True)
class Job:
    """One run: an experiment's variant for one seed, with its full config and the
    ``backprobe lab run`` command that makes this variant's runs."""

    experiment: str
    variant: str
    seed: int
    config: dict[str, Any]
    profile: str
    invocation: str
    db: Path | None
    command: str = ""


def lab_command(
    name: str,
    variant: str,
    seeds: int,
    first_seed: int = 0,
    quick: bool = False,
    settings: Sequence[str] = (),
) -> str:
    """``backprobe lab run NAME -v VARIANT --seeds N [--first-seed F] [--quick] [--set
    k=v]…``: the command line that runs these seeds of one variant."""
    parts = ["backprobe lab run", shlex.quote(name), "-v", shlex.quote(variant)]
    parts += ["--seeds", str(seeds)]
    if first_seed:
        parts += ["--first-seed", str(first_seed)]
    if quick:
        parts.append("--quick")
    for setting in settings:
        parts += ["--set", shlex.quote(setting)]
    return " ".join(parts)


@dataclass(frozen=True)
class JobResult:
    """What a run measured (``metrics``) and how long it took."""

    job: Job
    metrics: dict[str, float]
    seconds: float


def plan(
    experiment: Experiment,
    *,
    settings: Sequence[str] = (),
    seeds: int = 1,
    first_seed: int = 0,
    variants: Sequence[str] | None = None,
    quick: bool = False,
    db: Path | None = None,
) -> list[Job]:
    """The runs of ``experiment``: config = defaults ← variant ← quick ← ``settings``.

    Quick overrides come after the variant's, so that they can shrink what every variant
    sets (a length, a learning rate); an experiment's quick dict leaves alone the fields
    its variants are about (a depth sweep's depth)."""
    if seeds < 1:
        raise LabConfigError(f"Expected --seeds >= 1, got {seeds}.")
    user = parse_settings(experiment.config, settings, experiment.name)
    base = dict(experiment.quick) if quick else {}
    profile = ("quick" if quick else "full") + ("+set" if user else "")
    invocation = uuid.uuid4().hex[:12]
    jobs = []
    for variant in experiment.variant_names(variants):
        config = make_config(experiment.config, experiment.variants[variant], base, user)
        command = lab_command(experiment.name, variant, seeds, first_seed, quick, settings)
        for seed in range(first_seed, first_seed + seeds):
            jobs.append(
                Job(
                    experiment.name,
                    variant,
                    seed,
                    dataclasses.asdict(config),
                    profile,
                    invocation,
                    db,
                    command,
                )
            )
    return jobs


def _run_job(job: Job, progress: Any = None, index: int = 0) -> JobResult:
    """Run one job (in this process or a worker); ``progress`` is a queue or None."""
    experiment = get_experiment(job.experiment)
    config = experiment.config(**job.config)

    def report(step: int, total: int, loss: float, health: str) -> None:
        if progress is not None:
            progress.put((index, step, total, loss, health))

    ctx = RunContext(
        experiment=job.experiment,
        variant=job.variant,
        seed=job.seed,
        db=job.db,
        invocation=job.invocation,
        profile=job.profile,
        config=job.config,
        report=report,
        command=job.command,
    )
    start = time.perf_counter()
    with lab_threads(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(job.seed)
        np.random.seed(job.seed)
        metrics = experiment.run(config, ctx)
    return JobResult(job, metrics, time.perf_counter() - start)


class _Direct:
    """A queue's ``put`` that hands each message straight to ``update`` (one process)."""

    def __init__(self, update: Any) -> None:
        self.put = update


def _progress(console: Console, live: bool = True) -> Progress:
    """One bar per run; ``live=False`` shows none (a log gets a line per run instead)."""
    return Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(bar_width=12),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:>8}"),
        TextColumn("{task.fields[health]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not live,
    )


def _fmt_loss(loss: float) -> str:
    return f"{loss:.4g}" if math.isfinite(loss) else str(loss)


def run_experiment(
    name: str,
    *,
    settings: Sequence[str] = (),
    seeds: int = 1,
    first_seed: int = 0,
    jobs: int = 1,
    variants: Sequence[str] | None = None,
    quick: bool = False,
    db: Path | None = None,
    console: Console | None = None,
) -> list[JobResult]:
    """Run experiment ``name`` (every variant × ``seeds`` seeds) and return the results in
    plan order. Every run is stored in ``db`` with its config."""
    experiment = get_experiment(name)
    planned = plan(
        experiment,
        settings=settings,
        seeds=seeds,
        first_seed=first_seed,
        variants=variants,
        quick=quick,
        db=db,
    )
    return run_jobs(planned, jobs=jobs, console=console)


def run_jobs(
    planned: Sequence[Job],
    *,
    jobs: int = 1,
    console: Console | None = None,
    live: bool = True,
    keep_going: bool = False,
) -> list[JobResult]:
    """Run ``planned`` runs (of any experiments) in this process or ``jobs`` worker
    processes, in the given order as workers come free; results in plan order.

    ``live``: one progress bar per run; otherwise one line per finished run (a log).
    ``keep_going``: a run that raises is reported and left out of the results (its run
    stays in the database as failed) instead of ending the others."""
    if jobs < 1:
        raise LabConfigError(f"Expected --jobs >= 1, got {jobs}.")
    console = console or Console()
    results: list[JobResult | None] = [None] * len(planned)
    with _progress(console, live) as progress:
        bars = [
            progress.add_task(f"{j.variant} s{j.seed}", total=1, loss="", health="")
            for j in planned
        ]

        def update(message: tuple[int, int, int, float, str]) -> None:
            index, step, total, loss, health = message
            progress.update(
                bars[index], completed=step, total=total, loss=_fmt_loss(loss), health=health
            )

        def finished(index: int, result: JobResult) -> None:
            results[index] = result
            if not live:
                job, shown = result.job, get_experiment(result.job.experiment).metrics
                console.print(
                    f"{job.experiment} {job.variant} s{job.seed}: {result.seconds:.0f} s, "
                    + ", ".join(
                        f"{k} {_fmt_loss(result.metrics[k])}" for k in shown if k in result.metrics
                    )
                )

        def failed(job: Job, error: BaseException) -> None:
            if not keep_going:
                raise error
            console.print(f"{job.experiment} {job.variant} s{job.seed} failed: {error!r}")

        if jobs == 1 or len(planned) == 1:
            for i, job in enumerate(planned):
                try:
                    finished(i, _run_job(job, _Direct(update), i))
                except Exception as exc:
                    failed(job, exc)
        else:
            ctx = mp.get_context("spawn")
            with (
                ctx.Manager() as manager,
                ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool,
            ):
                messages = manager.Queue()
                futures: list[Future[JobResult]] = [
                    pool.submit(_run_job, job, messages, i) for i, job in enumerate(planned)
                ]
                pending = set(range(len(futures)))
                while pending:
                    while True:
                        try:
                            update(messages.get_nowait())
                        except queue.Empty:
                            break
                    for i in sorted(pending):
                        if futures[i].done():
                            pending.discard(i)
                            raised = futures[i].exception()
                            if raised is None:
                                finished(i, futures[i].result())
                            else:
                                failed(planned[i], raised)
                    time.sleep(0.1)
    return [r for r in results if r is not None]
