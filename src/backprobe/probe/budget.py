"""An overhead budget: the probe times its own steps and records as often as the budget
allows, instead of a guessed ``every``.

Between two ``Probe.step()`` calls lies one training step, recorded or not; the probe
times each with its own clock (:class:`StepClock`). Unrecorded steps give ``base`` (the
median of the latest ones, so that a compilation or a stall does not count), recorded
ones the cost of recording on top of it (``cost``: the median of the latest recorded
steps, less ``base``). Every step also pays the sentinel (:mod:`~backprobe.probe.sentinel`:
the loss, the gradient norms, the output-gradient samples), whose own time the probe
takes at each unrecorded step (``sentinel``: the median of the latest); training alone
is ``base − sentinel``. The measured overhead is the time recording added over the run,
as a fraction of the time training alone would have taken: ``recorded steps × cost /
(steps × (base − sentinel))``; the sentinel's share, ``sentinel / (base − sentinel)``,
is reported beside it. Medians, because a shared machine stalls now and then, and a
stall is no cost of recording.

The budget spaces the recordings, not the sentinel: the sentinel runs at every step by
design (a spike lives one step), so no schedule can thin it, and counting it against
the budget would leave nothing to record where it alone takes more (the gradient norms
are one pass over every gradient: about 2 % of a 16×512 MLP's step on a 2-core CPU).
The probe's whole cost is the two together, and both are stored with the run.

:class:`BudgetSchedule` records a step only when that overhead, with the step's
expected cost (the median of the latest recorded steps) added, stays within the budget:
recordings space themselves out by ``cost / (budget × base)`` steps, whatever makes a
recorded step slow (hooks, time profiles, a compiled model run eagerly, a slow sink).
The first ``warmup`` steps it schedules are all recorded (the early steps, where a bad
initialisation shows; they also give the first timings) and are paid back by the
spacing that follows. Step 0 sets the probe up (layer order, run database) and is not
counted.

The base must stay fresh. Were it measured on one slow unrecorded step (a collection, a
flush, another process), recording would look free, every step would be recorded, and
no unrecorded step would ever correct it: a 4-layer GPT-2 was seen recording 92 % of its
steps at 1.39x plain while its clock said 0 %. So after the warm-up
:data:`BASE_STEPS` unrecorded steps are timed before anything is recorded again, and an
unrecorded step is taken whenever the latest one is more than :data:`REFRESH_STEPS` steps
old (at most one step in 33 left unrecorded when recording is cheap).

On an accelerator a step that is not recorded returns before the device has finished;
over many steps the queue keeps the clock honest, since the host cannot run ahead of the
device by more than the queue holds.
"""

from __future__ import annotations

import statistics
from collections import deque

from ..errors import ProbeConfigError

#: The overhead a probe allows when it is given no ``every`` (a fraction: 2 %).
DEFAULT_BUDGET = 0.02
#: Steps recorded at the start of a run under a budget.
WARMUP_STEPS = 10
#: Latest step durations kept for the medians.
_WINDOW = 32
#: Unrecorded steps timed after the warm-up before the base is trusted.
BASE_STEPS = 3
#: The most steps recorded since the latest unrecorded one before the base is refreshed.
REFRESH_STEPS = 32


class StepClock:
    """Durations of the steps between ``Probe.step()`` calls, split into recorded and
    unrecorded ones, and the overhead they show."""

    def __init__(self) -> None:
        self._unrecorded: deque[float] = deque(maxlen=_WINDOW)
        self._recorded: deque[float] = deque(maxlen=_WINDOW)
        self._sentinel: deque[float] = deque(maxlen=_WINDOW)  # its time at unrecorded steps
        self.steps = 0  # steps counted (all but step 0)
        self.recorded_steps = 0
        self.last_unrecorded: int | None = None  # the latest unrecorded step timed

    def observe(self, step: int, seconds: float, recorded: bool, sentinel: float = 0.0) -> None:
        """Count one step's duration, and at an unrecorded step the seconds of it that the
        sentinel took (step 0, the set-up, is not counted)."""
        if step == 0:
            return
        self.steps += 1
        if recorded:
            self.recorded_steps += 1
            self._recorded.append(seconds)
        else:
            self._unrecorded.append(seconds)
            self._sentinel.append(min(sentinel, seconds))
            self.last_unrecorded = step

    @property
    def unrecorded_timed(self) -> int:
        """How many unrecorded steps the base is the median of (at most the window)."""
        return len(self._unrecorded)

    @property
    def base(self) -> float | None:
        """Seconds of a step without recording (median of the latest), None before one."""
        return statistics.median(self._unrecorded) if self._unrecorded else None

    @property
    def recorded_cost(self) -> float | None:
        """Seconds a recorded step adds (median of the latest), None before both kinds."""
        base = self.base
        if base is None or not self._recorded:
            return None
        return max(statistics.median(self._recorded) - base, 0.0)

    def _training(self) -> float | None:
        """Seconds of a step without the probe: ``base`` less the sentinel's median."""
        base = self.base
        if base is None:
            return None
        return base - statistics.median(self._sentinel)

    def overhead(self, extra_recorded: int = 0, extra_steps: int = 0) -> float:
        """The measured overhead of recording (a fraction of the training time without
        the probe), NaN before a step of each kind; with ``extra_*``: as if that many more
        steps (of which ``extra_recorded`` recorded ones of the usual cost) had run."""
        training, cost = self._training(), self.recorded_cost
        steps = self.steps + extra_steps
        if training is None or cost is None or training <= 0 or steps == 0:
            return float("nan")
        return (self.recorded_steps + extra_recorded) * cost / (steps * training)

    def sentinel_overhead(self) -> float:
        """The sentinel's measured overhead (a fraction of the training time without the
        probe), NaN before an unrecorded step."""
        training = self._training()
        if training is None or training <= 0:
            return float("nan")
        return statistics.median(self._sentinel) / training


class BudgetSchedule:
    """Records a step when the measured overhead, counting that step, stays within
    ``budget`` (a fraction: 0.02 is 2 %); see the module docstring."""

    def __init__(self, clock: StepClock, budget: float, warmup: int = WARMUP_STEPS) -> None:
        if not (isinstance(budget, float | int) and 0 < budget < 1):
            raise ProbeConfigError(
                f"Expected budget to be a fraction of the training time between 0 and 1 "
                f"(0.02 is 2 %), but got {budget!r}."
            )
        self.clock = clock
        self.budget = float(budget)
        self.warmup = warmup
        self._first: int | None = None  # the first step asked (a resumed run's is not 0)
        self.__name__ = f"budget {100 * self.budget:g}%"

    def __call__(self, step: int) -> bool:
        """Whether to record ``step`` (steps are asked in order, any number of times)."""
        if self._first is None:
            self._first = step
        if step - self._first < self.warmup:
            return True
        clock = self.clock
        if clock.unrecorded_timed < BASE_STEPS or clock.recorded_cost is None:
            return False  # too few unrecorded steps timed: time them first
        assert clock.last_unrecorded is not None
        if step - clock.last_unrecorded > REFRESH_STEPS:
            return False  # keep the base fresh
        return clock.overhead(extra_recorded=1, extra_steps=1) <= self.budget
