"""``backprobe lab table``: the lab's results, read back from the run database.

For each experiment and variant the table takes the newest invocation of
``backprobe lab run`` that ran it, reads each seed's final metrics (the last value the
run recorded), and shows their mean and range over seeds beside the published reference
and the verdict: on how many seeds the published direction holds.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...diagnose.verdict import verdict
from ...store.db import RunDatabase
from ...store.run import open_run
from .base import Experiment, PerSeed, Row, failing_seeds
from .registry import experiments
from .runner import lab_command
from .settings import make_config

__all__ = ["LabRun", "collect", "final_value", "results_rows"]


@dataclass
class LabRun:
    """A stored lab run: its identity (from its config) and final metrics."""

    run_id: int
    experiment: str
    variant: str
    seed: int
    invocation: str
    profile: str
    created: float
    seconds: float = math.nan
    command: str = ""
    config: dict[str, object] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def final_value(series: np.ndarray) -> float:
    """The last finite value of a recorded scalar [S]; NaN if none."""
    finite = np.flatnonzero(np.isfinite(series))
    return float(series[finite[-1]]) if finite.size else math.nan


def collect(db: Path) -> list[LabRun]:
    """Every finished lab run in ``db``, oldest first, with its final metrics."""
    with RunDatabase(db, read_only=True) as database:
        infos = database.runs()
    runs = []
    for info in infos:
        lab = info.config.get("lab") if isinstance(info.config, dict) else None
        if not isinstance(lab, dict) or info.status != "finished":
            continue
        run = LabRun(
            run_id=info.id,
            experiment=str(lab.get("experiment")),
            variant=str(lab.get("variant")),
            seed=int(lab.get("seed", 0)),
            invocation=str(lab.get("invocation")),
            profile=str(lab.get("profile", "")),
            created=info.created,
            seconds=info.updated - info.created,
            command=str(lab.get("command", "")),
            config=dict(info.config.get("config") or {}),
        )
        stored = open_run(db, info.id)
        names = stored.scalar_names
        # A diverged run's metrics are those of its post-mortem step, NaN or inf included.
        diverged = stored.history("diverged") if "diverged" in names else np.zeros(0)
        post_mortem = np.flatnonzero(diverged == 1)
        for name in names:
            series = stored.history(name)
            run.metrics[name] = (
                float(series[post_mortem[0]]) if len(post_mortem) else final_value(series)
            )
        if stored.steps.size:  # first / last layer gradient norm at the last recorded step
            ratio = verdict(stored).ratio
            run.metrics.setdefault("grad_ratio", math.nan if ratio is None else ratio)
        runs.append(run)
    return runs


def _latest(runs: Sequence[LabRun]) -> dict[tuple[str, str], list[LabRun]]:
    """(experiment, variant) → one run per seed: the newest invocation's runs, and for
    seeds it did not run, the newest earlier run with the same profile and config (so
    that an interrupted ``make results`` resumes without rerunning what it finished)."""
    newest: dict[tuple[str, str], LabRun] = {}
    for run in runs:  # oldest first: later invocations overwrite
        newest[(run.experiment, run.variant)] = run
    groups: dict[tuple[str, str], dict[int, LabRun]] = defaultdict(dict)
    for run in runs:  # oldest first: a later run of a seed replaces an earlier one
        last = newest[(run.experiment, run.variant)]
        if run.invocation == last.invocation or (
            run.profile == last.profile and run.config == last.config
        ):
            groups[(run.experiment, run.variant)][run.seed] = run
    return {key: [by_seed[s] for s in sorted(by_seed)] for key, by_seed in groups.items()}


def _command(runs: Sequence[LabRun]) -> str:
    """The command that made these runs (stored with them); for runs stored before
    commands were, the equivalent one rebuilt from their identity."""
    stored = {r.command for r in runs if r.command}
    if len(stored) == 1:
        return stored.pop()
    seeds = sorted(r.seed for r in runs)
    return lab_command(
        runs[0].experiment,
        runs[0].variant,
        len(seeds),
        seeds[0],
        quick=runs[0].profile.startswith("quick"),
    )


def _rows(experiment: Experiment, groups: dict[str, list[LabRun]]) -> list[Row]:
    rows = []
    for variant in experiment.variant_names():
        runs = sorted(groups.get(variant, ()), key=lambda r: r.seed)
        if not runs:
            continue
        label = variant if runs[0].profile.startswith("full") else f"{variant} ({runs[0].profile})"
        expectations = {e.metric: e for e in experiment.expect.get(variant, ())}
        command = _command(runs)
        for metric in experiment.metrics:
            measured = [r for r in runs if metric in r.metrics]
            if not measured:  # not measured by this variant (RMSE of a classifier)
                continue
            values = tuple(r.metrics[metric] for r in measured)
            seeds = tuple(r.seed for r in measured)
            expected = expectations.get(metric)
            note = ""
            if all(math.isnan(v) for v in values):
                note = experiment.missing.get(metric, "")
            rows.append(
                Row(
                    experiment=experiment.name,
                    variant=label,
                    metric=metric,
                    values=values,
                    seed_ids=seeds,
                    reference="" if expected is None else str(expected),
                    failing=None
                    if expected is None or note
                    else failing_seeds(values, seeds, expected.holds),
                    seconds=float(np.mean([r.seconds for r in measured])),
                    command=command,
                    note=note,
                )
            )
    if experiment.summarise is not None and groups:
        per_variant = {
            v: {
                m: PerSeed({r.seed: r.metrics.get(m, math.nan) for r in runs})
                for m in _metric_names(runs)
            }
            for v, runs in groups.items()
        }
        commands = sorted({_invocation_command(runs) for runs in groups.values()})
        rows.extend(
            dataclasses.replace(row, command=row.command or "; ".join(commands))
            for row in experiment.summarise(per_variant, make_config(experiment.config))
        )
    return rows


def _invocation_command(runs: Sequence[LabRun]) -> str:
    """``backprobe lab run NAME --seeds N …`` for the invocation that made ``runs``."""
    return re.sub(r" -v \S+", "", _command(runs))


def _metric_names(runs: Sequence[LabRun]) -> list[str]:
    return sorted({m for r in runs for m in r.metrics})


def results_rows(db: Path, names: Sequence[str] | None = None) -> list[Row]:
    """The table's rows for the experiments ``names`` (default all), registry order."""
    groups = _latest(collect(db))
    rows = []
    for experiment in experiments():
        if names and experiment.name not in names:
            continue
        mine = {v: runs for (e, v), runs in groups.items() if e == experiment.name}
        rows.extend(_rows(experiment, mine))
    return rows
