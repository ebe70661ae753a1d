"""The overhead budget: the probe times its own steps and spaces recordings so that the
overhead it measures stays within the budget, whatever makes a recorded step slow."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from backprobe.errors import ProbeConfigError
from backprobe.probe.budget import WARMUP_STEPS, BudgetSchedule, StepClock


def _simulate(
    budget: float, base: float, cost: float, steps: int, stalls: dict[int, float] | None = None
) -> tuple[StepClock, list]:
    """Steps of ``base`` seconds, ``base + cost`` when recorded, under a budget; a step
    in ``stalls`` takes that many seconds more."""
    clock = StepClock()
    schedule = BudgetSchedule(clock, budget)
    recorded = []
    for step in range(steps):
        record = schedule(step)
        if record:
            recorded.append(step)
        seconds = base + (cost if record else 0.0) + (stalls or {}).get(step, 0.0)
        clock.observe(step, seconds, record)
    return clock, recorded


@pytest.mark.parametrize("cost", [0.05, 0.5, 5.0])
def test_budget_spaces_recordings_by_cost_over_budget(cost):
    clock, recorded = _simulate(0.02, 1.0, cost, 5000)
    assert recorded[:WARMUP_STEPS] == list(range(WARMUP_STEPS))
    assert 0.015 < clock.overhead() <= 0.02
    gaps = np.diff(recorded[-5:])  # paid back: one recording per cost / (budget × base)
    assert np.all(np.abs(gaps - max(cost / 0.02, 1)) <= 1)


def test_a_cheap_recording_is_taken_at_almost_every_step():
    """Free recording: every step but those that keep the base fresh (one in 33)."""
    clock, recorded = _simulate(0.02, 1.0, 0.001, 200)
    assert len(recorded) > 180
    assert clock.overhead() <= 0.02


def test_a_stalled_first_unrecorded_step_does_not_make_recording_look_free():
    """The first unrecorded step after the warm-up stalls (×1.5): a base from it alone
    would make a 30 % recording look free and every later step recorded, the base never
    timed again. Three unrecorded steps and a refreshed base keep the budget."""
    first = WARMUP_STEPS
    clock, recorded = _simulate(0.02, 1.0, 0.3, 2000, stalls={first: 0.5, first + 1: 0.5})
    assert len(recorded) < 0.1 * 2000
    assert clock.overhead() <= 0.02 and clock.base == 1.0


def test_stalls_do_not_count_as_recording_cost():
    clock = StepClock()
    for step, (seconds, recorded) in enumerate(
        [(1.0, True), (1.0, False), (50.0, False), (1.0, False), (1.2, True), (1.2, True)]
    ):
        clock.observe(step, seconds, recorded)
    assert clock.base == 1.0
    assert clock.recorded_cost == pytest.approx(0.2)


def test_overhead_is_nan_until_both_kinds_of_step_were_timed():
    clock = StepClock()
    clock.observe(0, 5.0, True)  # step 0 sets the probe up: not counted
    clock.observe(1, 2.0, True)
    assert np.isnan(clock.overhead())
    clock.observe(2, 1.0, False)
    assert clock.overhead() == pytest.approx(0.5)  # 1 recorded × 1 s over 2 steps × 1 s


@pytest.mark.parametrize("budget", [0, 1, -0.1, "2%"])
def test_budget_must_be_a_fraction(budget):
    with pytest.raises(ProbeConfigError, match="between 0 and 1"):
        BudgetSchedule(StepClock(), budget)


def test_every_and_budget_together_are_refused():
    with pytest.raises(ProbeConfigError, match="either every="):
        from backprobe import Probe

        Probe(nn.Linear(2, 2), every=10, budget=0.02, db=None)


class _SlowSink:
    """A statistic that takes ``seconds`` to receive each recorded step."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.steps: list[int] = []

    def watch(self, layers) -> None:
        pass

    def set_layers(self, layers) -> None:
        pass

    def append(self, step, series, profiles) -> None:
        time.sleep(self.seconds)
        self.steps.append(step)

    def flush(self) -> None:
        pass

    def close(self, status, error=None) -> None:
        pass


def test_probe_keeps_a_slow_statistic_within_its_budget(make_probe):
    """Training steps of 4 ms, a recorded step 4 ms slower: a 25 % budget records about
    every 4th step once the warm-up is paid back, and the overhead the probe measures
    with its own clock stays near the budget."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    sink = _SlowSink(0.004)
    probe = make_probe(model, budget=0.25, sinks=[sink]).attach()
    x = torch.randn(2, 4)
    steps = 160
    for _ in range(steps):
        model(x).sum().backward()
        time.sleep(0.004)  # the rest of a training step
        probe.step()
        model.zero_grad()
    recorded = len(probe.steps)
    assert probe.schedule.__name__ == "budget 25%"
    assert WARMUP_STEPS + 5 < recorded < steps / 2
    assert 0.1 < probe.overhead < 0.25 * 1.4
    stored = probe.history("overhead").ravel()
    assert np.isnan(stored[0]) and np.nanmax(stored[WARMUP_STEPS + 1 :]) < 0.25 * 1.4


def test_a_probe_given_no_schedule_records_within_the_default_budget(make_probe):
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    from backprobe import Probe

    with Probe(model, db=None) as probe:
        assert probe.schedule.__name__ == "budget 2%"
    assert make_probe(model, budget=0.1).schedule.__name__ == "budget 10%"
    assert make_probe(model, every=1).schedule.__name__ == "every_1"
    assert make_probe(model, every=1).probe_config["every"] == "every_1"


@pytest.mark.parametrize("stored", [False, True])
def test_a_run_that_ends_while_paying_back_stores_its_overhead_at_close(tmp_path, stored):
    """The warm-up's recorded steps come before any unrecorded step was timed, so none of
    them could store the overhead; the run ends before the next recording: the overhead
    measured to the end is stored at the last recorded step when the probe closes."""
    from backprobe import Probe
    from backprobe.store.run import open_run

    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    db = tmp_path / "runs.db" if stored else None
    probe = Probe(model, db=db, name="short", sinks=[_SlowSink(0.004)]).attach()
    x = torch.randn(2, 4)
    for _ in range(WARMUP_STEPS + 5):
        model(x).sum().backward()
        probe.step()
        model.zero_grad()
    assert probe.steps.tolist() == list(range(WARMUP_STEPS))  # paying back since
    assert np.isnan(probe.history("overhead")).all()
    probe.close()
    run = open_run(db, "short") if stored else probe
    overhead = run.history("overhead").ravel()
    assert np.isnan(overhead[:-1]).all()
    assert overhead[-1] == pytest.approx(probe.overhead, rel=1e-6)
    assert overhead[-1] > 0.02  # the warm-up's cost, not paid back yet


def test_a_resumed_run_records_its_first_steps_under_the_budget(make_probe):
    """A run continued at a framework's global step 1000 gets the warm-up too: without it,
    no recorded step would ever be timed and the budget would record nothing."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    probe = make_probe(model, budget=0.02, first_step=1000, sinks=[_SlowSink(0.002)]).attach()
    x = torch.randn(2, 4)
    for _ in range(WARMUP_STEPS + 3):
        model(x).sum().backward()
        probe.step()
        model.zero_grad()
    assert probe.steps.tolist()[:WARMUP_STEPS] == list(range(1000, 1000 + WARMUP_STEPS))


def test_detaching_and_attaching_again_keeps_the_schedule(make_probe):
    """attach() asks the schedule about the step in progress again: the warm-up still
    counts steps, not questions."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    probe = make_probe(model, budget=0.02, sinks=[_SlowSink(0.002)]).attach()
    x = torch.randn(2, 4)
    for _ in range(WARMUP_STEPS + 3):
        probe.detach()
        probe.attach()
        model(x).sum().backward()
        probe.step()
        model.zero_grad()
    assert probe.steps.tolist()[:WARMUP_STEPS] == list(range(WARMUP_STEPS))


def test_the_sentinel_is_measured_apart_from_recording():
    """Unrecorded steps of 1.1 s of which the sentinel took 0.1 s: training alone is
    1.0 s, the sentinel's overhead 10 %; a recorded step 0.2 s slower is recording's."""
    clock = StepClock()
    for step in range(1, 41):
        recorded = step % 4 == 0
        clock.observe(step, 1.3 if recorded else 1.1, recorded, sentinel=0.1)
    assert clock.sentinel_overhead() == pytest.approx(0.1)
    assert clock.overhead() == pytest.approx(10 * 0.2 / (40 * 1.0))


def test_the_probe_measures_a_slow_sentinel(make_probe, monkeypatch):
    """A sentinel made 3 ms slow on 6 ms training steps: the probe stores about 50 % as
    the sentinel's overhead and leaves it out of recording's."""
    from backprobe.probe.sentinel import Sentinel

    row = Sentinel.row

    def slow_row(self, *args, **kwargs):
        time.sleep(0.003)
        return row(self, *args, **kwargs)

    monkeypatch.setattr(Sentinel, "row", slow_row)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    probe = make_probe(model, every=lambda step: step % 4 == 0).attach()
    x = torch.randn(2, 4)
    for _ in range(40):
        model(x).sum().backward()
        time.sleep(0.006)
        probe.step()
        model.zero_grad()
    probe.close()
    assert 0.35 < probe.sentinel_overhead < 0.8
    assert probe.overhead < 0.2
    stored = probe.history("sentinel_overhead").ravel()
    assert stored[-1] == pytest.approx(probe.sentinel_overhead, rel=1e-6)
