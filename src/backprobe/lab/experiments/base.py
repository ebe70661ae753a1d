"""What an experiment is: a config dataclass, named variants, a run function, and what
the papers lead us to expect.

An experiment's config dataclass holds its *full* settings as defaults (the ones whose
results ``docs/results.md`` reports); ``quick`` overrides a few of them so that CI runs
the experiment in seconds and still sees the direction of the result. A *variant* is a
named set of overrides (``{"cell": "lstm"}``): one run per variant and seed. The run
function trains and evaluates one (config, seed) and returns its metrics; everything it
trains is probed and stored in the run database with its config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..._format import compact_number
from ...errors import LabConfigError, LabDefinitionError

__all__ = [
    "Expectation",
    "Experiment",
    "PerSeed",
    "Reporter",
    "Row",
    "RunContext",
    "failing_seeds",
    "summary_stats",
]

#: ``report(step, total, loss, health)``: live progress of one run.
Reporter = Callable[[int, int, float, str], None]


def _no_report(step: int, total: int, loss: float, health: str) -> None:
    """The reporter of a run nobody watches."""


@dataclass(frozen=True)
class RunContext:
    """Who a run is, where it is stored, and whom it tells how it goes.

    ``name`` is the run's name in the database, ``lab/<experiment>/<variant>/s<seed>``;
    ``stored_config`` is what the probe stores with the run: the experiment, variant,
    seed, invocation id, profile (quick / full), the ``backprobe lab run`` command that
    makes this variant's runs (``command``) and every config field.
    """

    experiment: str
    variant: str
    seed: int
    db: Path | None
    invocation: str
    profile: str
    config: Mapping[str, Any]
    report: Reporter = _no_report
    command: str = ""

    @property
    def name(self) -> str:
        return f"lab/{self.experiment}/{self.variant}/s{self.seed}"

    @property
    def stored_config(self) -> dict[str, Any]:
        return {
            "lab": {
                "experiment": self.experiment,
                "variant": self.variant,
                "seed": self.seed,
                "invocation": self.invocation,
                "profile": self.profile,
                "command": self.command,
            },
            "config": dict(self.config),
        }


@dataclass(frozen=True)
class Expectation:
    """A published result, as a direction to check on every seed: ``metric op value``.

    ``op`` is "<" or ">"; the table checks each seed's value and says on how many seeds
    it holds. ``reference`` names the paper and the table or figure that reports the
    number (docs/references.md gives the full citation).
    """

    metric: str
    op: Literal["<", ">"]
    value: float
    reference: str

    def holds(self, measured: float) -> bool:
        if not math.isfinite(measured):
            return False
        return measured < self.value if self.op == "<" else measured > self.value

    def __str__(self) -> str:
        return f"{self.op} {compact_number(self.value)} ({self.reference})"


class PerSeed(tuple[float, ...]):
    """One metric's values, one per seed in seed order; ``seeds`` names the seeds.

    A tuple of floats everywhere a sequence of values is expected (``np.mean`` works);
    summaries that compare variants seed by seed read ``seeds``."""

    seeds: tuple[int, ...]

    def __new__(cls, values: Mapping[int, float]) -> PerSeed:
        order = sorted(values)
        self = super().__new__(cls, (float(values[s]) for s in order))
        self.seeds = tuple(order)
        return self

    def by_seed(self) -> dict[int, float]:
        return dict(zip(self.seeds, self, strict=True))


def summary_stats(values: Sequence[float]) -> tuple[float, float, float, float]:
    """(mean, min, max, std) over the finite values; a mean of ``inf`` when none is finite
    but one overflowed, NaN (and NaN range) when every value is NaN."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        nothing = math.inf if any(math.isinf(v) for v in values) else math.nan
        return nothing, math.nan, math.nan, math.nan
    return (
        math.fsum(finite) / len(finite),
        min(finite),
        max(finite),
        float(np.std(finite)),
    )


@dataclass(frozen=True)
class Row:
    """A line of ``backprobe lab table`` and of docs/results.md: one metric of one variant
    (or a value derived across variants) over seeds.

    ``values`` holds one number per seed of ``seed_ids``; ``failing`` is None when nothing
    published is checked, else the seeds on which the claim fails (empty: it holds on
    every seed). ``command`` is the ``backprobe lab run`` command that made the runs.
    ``note`` is shown instead of a value when no seed measured one (an optional package
    missing)."""

    experiment: str
    variant: str
    metric: str
    values: tuple[float, ...]
    seed_ids: tuple[int, ...]
    reference: str = ""
    failing: tuple[int, ...] | None = None
    seconds: float = math.nan  # mean wall time of a run (start to finish in the run DB)
    command: str = ""
    note: str = ""

    @property
    def seeds(self) -> int:
        return len(self.seed_ids)

    @property
    def value(self) -> float:
        """The mean over seeds' finite values (see :func:`summary_stats`)."""
        return summary_stats(self.values)[0]

    @property
    def low(self) -> float:
        return summary_stats(self.values)[1]

    @property
    def high(self) -> float:
        return summary_stats(self.values)[2]

    @property
    def spread(self) -> float:
        """The standard deviation over seeds (0 for one seed)."""
        return summary_stats(self.values)[3]

    @property
    def verdict(self) -> str:
        """ "reproduced" on every seed, "partly reproduced" on some, "not reproduced" on
        none; "" when nothing published is checked."""
        if self.failing is None:
            return ""
        if not self.failing:
            return "reproduced"
        return "not reproduced" if len(self.failing) >= self.seeds else "partly reproduced"

    @property
    def holds_on(self) -> str:
        """On how many seeds the claim holds: "3/3 seeds", "2/3: fails on seed 1",
        "0/3 seeds"; "" when nothing is checked."""
        if self.failing is None:
            return ""
        held = self.seeds - len(self.failing)
        if not self.failing or held == 0:
            return f"{held}/{self.seeds} seed{'s' if self.seeds > 1 else ''}"
        which = ", ".join(str(s) for s in self.failing)
        return f"{held}/{self.seeds}: fails on seed{'s' if len(self.failing) > 1 else ''} {which}"


def failing_seeds(
    values: Sequence[float], seeds: Sequence[int], check: Callable[[float], bool]
) -> tuple[int, ...]:
    """The seeds whose value does not pass ``check`` (a NaN never does)."""
    return tuple(s for s, v in zip(seeds, values, strict=True) if not check(v))


RunFn = Callable[[Any, RunContext], dict[str, float]]
#: Rows derived across variants (a depth sweep's maximum trainable depth), from
#: {variant: {metric: PerSeed values}} and the config the variants started from.
SummaryFn = Callable[[Mapping[str, Mapping[str, Sequence[float]]], Any], list[Row]]
#: The paper's figure drawn from stored runs: {variant: seed 0's run} → a matplotlib
#: Figure (typed loosely: the lab's registry never imports matplotlib).
FigureFn = Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Experiment:
    """A named experiment of the lab.

    Attributes:
        name: what ``backprobe lab run`` is called with.
        title: one line for ``backprobe lab list``.
        config: the config dataclass; its defaults are the full run.
        run: trains one variant for one seed; returns {metric: value}.
        variants: variant name → config overrides; one run per variant and seed.
        quick: overrides for the CI-sized run (seconds per variant), applied after the
            variant's own.
        metrics: the metrics the table shows, first the main one.
        expect: variant → expectations checked by the table.
        summarise: optional rows derived across variants.
        seeds: seeds per variant for ``docs/results.md`` (``make results``): at least 3,
            so that the page says on how many seeds a claim holds.
        note: what docs/results.md says about the configuration (what was shortened
            against the papers' and why).
        missing: metric → what the table shows for a variant where every seed left it
            NaN (an optional package that is not installed).
        figure: draws the paper's figure from each variant's stored seed-0 run;
            docs/results.md shows it under the experiment's table, with ``caption``.
    """

    name: str
    title: str
    config: type
    run: RunFn
    variants: Mapping[str, Mapping[str, Any]]
    quick: Mapping[str, Any] = field(default_factory=dict)
    metrics: tuple[str, ...] = ()
    expect: Mapping[str, Sequence[Expectation]] = field(default_factory=dict)
    summarise: SummaryFn | None = None
    seeds: int = 3
    note: str = ""
    missing: Mapping[str, str] = field(default_factory=dict)
    figure: FigureFn | None = None
    caption: str = ""

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.config):
            raise LabDefinitionError(
                f"Experiment {self.name}: expected a dataclass type as config, got "
                f"{self.config!r}; decorate it with @dataclass(frozen=True)."
            )
        known = {f.name for f in dataclasses.fields(self.config)}
        for where, overrides in [("quick", self.quick), *self.variants.items()]:
            unknown = set(overrides) - known
            if unknown:
                raise LabDefinitionError(
                    f"Experiment {self.name}, {where}: expected fields of "
                    f"{self.config.__name__}, got unknown {sorted(unknown)}; add them to the "
                    "config or fix their names."
                )
        missing = set(self.expect) - set(self.variants)
        if missing:
            raise LabDefinitionError(
                f"Experiment {self.name}: expected expectations for its variants "
                f"({', '.join(self.variants)}), got them for unknown {sorted(missing)}."
            )

    def variant_names(self, selected: Sequence[str] | None = None) -> list[str]:
        """All variants, or the ``selected`` ones (checked)."""
        if not selected:
            return list(self.variants)
        unknown = [v for v in selected if v not in self.variants]
        if unknown:
            raise LabConfigError(
                f"Experiment {self.name!r} has no variant {unknown[0]!r}; expected one of "
                f"{', '.join(self.variants)}."
            )
        return list(dict.fromkeys(selected))
