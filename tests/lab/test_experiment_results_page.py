"""Results over seeds: the mean and range, on how many seeds a published direction holds,
the command that made the runs, and the page written from a stored run database."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from rich.console import Console

from backprobe.lab.experiments import Expectation, Row, get_experiment, run_experiment
from backprobe.lab.experiments.base import failing_seeds
from backprobe.lab.experiments.registry import EXPERIMENTS
from backprobe.lab.experiments.results import ordered_jobs, write_results
from backprobe.lab.experiments.runner import lab_command, run_jobs
from backprobe.lab.experiments.show import value_text, verdict_text
from backprobe.lab.experiments.table import results_rows


def _row(values: tuple[float, ...], failing: tuple[int, ...] | None) -> Row:
    return Row("x", "v", "m", values, tuple(range(len(values))), "> 0.15 (paper)", failing)


def test_a_row_gives_mean_range_and_on_how_many_seeds_a_claim_holds() -> None:
    expectation = Expectation("m", ">", 0.15, "paper")
    values = (0.1, 0.2, 0.3)
    failing = failing_seeds(values, (0, 1, 2), expectation.holds)
    assert failing == (0,)
    row = _row(values, failing)
    assert (row.value, row.low, row.high, row.seeds) == (pytest.approx(0.2), 0.1, 0.3, 3)
    assert row.verdict == "partly reproduced" and row.holds_on == "2/3: fails on seed 0"
    assert value_text(row) == "0.2 (0.1–0.3)"
    assert verdict_text(row) == "⚠️ partly reproduced, 2/3: fails on seed 0"
    assert _row(values, ()).holds_on == "3/3 seeds" and _row(values, ()).verdict == "reproduced"
    none = _row(values, (0, 1, 2))
    assert none.verdict == "not reproduced" and none.holds_on == "0/3 seeds"
    assert _row(values, None).verdict == "" and verdict_text(_row(values, None)) == ""
    assert _row((0.1, 0.2, 0.3), (0, 2)).holds_on == "1/3: fails on seeds 0, 2"


def test_a_diverged_seed_fails_the_claim_and_is_counted_out_loud() -> None:
    values = (0.01, math.nan, 0.03)
    failing = failing_seeds(values, (0, 1, 2), Expectation("m", "<", 0.05, "p").holds)
    row = _row(values, failing)
    assert failing == (1,) and row.value == pytest.approx(0.02)
    assert value_text(row) == "0.02 (0.01–0.03), NaN on 1 seed"
    assert value_text(_row((math.nan, math.nan), None)) == "NaN (diverged)"
    assert value_text(_row((math.inf, math.nan), None)) == "inf, NaN on 1 seed"


def test_commands_name_variant_seeds_profile_and_settings() -> None:
    command = lab_command("adding", "lstm-T100", 3)
    assert command == "backprobe lab run adding -v lstm-T100 --seeds 3"
    assert lab_command("copy", "gru", 2, first_seed=5, quick=True, settings=["lr=0.01"]) == (
        "backprobe lab run copy -v gru --seeds 2 --first-seed 5 --quick --set lr=0.01"
    )


def test_make_results_runs_the_longest_first() -> None:
    jobs = ordered_jobs(["insurance", "temporal-order"], quick=False, db=None)
    assert len(jobs) == 3 * (len(get_experiment("insurance").variants) + 5)
    assert jobs[0].experiment == "temporal-order" and jobs[0].config["omega"] > 0
    assert jobs[-1].experiment == "insurance"


def test_the_page_is_written_from_the_stored_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "results.db"
    insurance = get_experiment("insurance")
    results = run_experiment(
        "insurance", variants=["seeds-net"], seeds=3, quick=True, db=db, console=Console(quiet=True)
    )
    accuracy = {r.job.seed: r.metrics["test_accuracy"] for r in results}
    (row,) = [r for r in results_rows(db, ["insurance"]) if r.metric == "test_accuracy"]
    assert row.seed_ids == (0, 1, 2) and row.values == tuple(accuracy[s] for s in (0, 1, 2))
    assert row.command == "backprobe lab run insurance -v seeds-net --seeds 3 --quick"
    assert row.verdict == "reproduced" and row.holds_on == "3/3 seeds"
    # A stricter claim, between the seeds' values, fails on the seeds below it.
    middle = sorted(accuracy.values())[1]
    strict = dataclasses.replace(
        insurance, expect={"seeds-net": [Expectation("test_accuracy", ">", middle, "paper")]}
    )
    monkeypatch.setitem(EXPERIMENTS, "insurance", strict)
    (row,) = [r for r in results_rows(db, ["insurance"]) if r.metric == "test_accuracy"]
    below = tuple(s for s in (0, 1, 2) if accuracy[s] <= middle)
    assert row.failing == below and row.verdict == "partly reproduced"
    page = write_results(db, tmp_path / "results.md").read_text()
    assert "| insurance | seeds-net (quick) | test_accuracy |" in page
    assert f"⚠️ partly reproduced, 1/3: fails on seeds {below[0]}, {below[1]}" in page
    assert "`backprobe lab run insurance -v seeds-net --seeds 3 --quick`" in page
    assert "| 0, 1, 2 |" in page and "[references.md](references.md)" in page
    assert "1 published direction checked" in page  # the claims, counted
    assert "## adding" in page and "*No runs stored yet.*" in page


def test_an_interrupted_make_results_resumes_where_it_stopped(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    run_experiment(
        "insurance", variants=["seeds-net"], seeds=2, quick=True, db=db, console=Console(quiet=True)
    )
    left = ordered_jobs(["insurance"], quick=True, db=db, resume=True)
    assert ("seeds-net", 0) not in {(j.variant, j.seed) for j in left}
    assert len(left) == 3 * len(get_experiment("insurance").variants) - 2
    run_jobs([j for j in left if j.variant == "seeds-net"], console=Console(quiet=True))
    (row,) = [r for r in results_rows(db, ["insurance"]) if r.metric == "test_accuracy"]
    assert row.seed_ids == (0, 1, 2)  # two invocations, one configuration
    assert row.command == "backprobe lab run insurance -v seeds-net --seeds 3 --quick"
    # A run with another configuration starts afresh: only its own seeds count.
    run_experiment(
        "insurance",
        variants=["seeds-net"],
        settings=["steps=20"],
        quick=True,
        db=db,
        console=Console(quiet=True),
    )
    (row,) = [r for r in results_rows(db, ["insurance"]) if r.metric == "test_accuracy"]
    assert row.seed_ids == (0,) and "quick+set" in row.variant
