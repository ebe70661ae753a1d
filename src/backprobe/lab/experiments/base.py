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

from ..._format import compact_number
from ...errors import LabConfigError, LabDefinitionError

__all__ = [
    "Expectation",
    "Experiment",
    "Reporter",
    "Row",
    "RunContext",
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
    seed, invocation id, profile (quick / full) and every config field.
    """

    experiment: str
    variant: str
    seed: int
    db: Path | None
    invocation: str
    profile: str
    config: Mapping[str, Any]
    report: Reporter = _no_report

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
            },
            "config": dict(self.config),
        }


@dataclass(frozen=True)
class Expectation:
    """A published result, as a direction to check: ``metric op value``.

    ``op`` is "<" or ">"; the verdict is "reproduced" when the mean over seeds satisfies
    it. ``reference`` says where the number comes from.
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


@dataclass(frozen=True)
class Row:
    """A line of ``backprobe lab table``."""

    experiment: str
    variant: str
    metric: str
    value: float
    spread: float  # std over seeds (0 for one seed)
    seeds: int
    reference: str
    verdict: str  # "reproduced", "not reproduced" or "" (nothing published to check)
    seconds: float = math.nan  # mean wall time of a run (start to finish in the run DB)


RunFn = Callable[[Any, RunContext], dict[str, float]]
#: Rows derived across variants (a depth sweep's maximum trainable depth), from
#: {variant: {metric: [value per seed]}} and the config the variants started from.
SummaryFn = Callable[[Mapping[str, Mapping[str, Sequence[float]]], Any], list[Row]]


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
        seeds: seeds per variant for ``docs/results.md`` (``make results``).
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
    seeds: int = 1

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
