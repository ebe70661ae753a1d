"""``bp.prescribe(model, batch)``: each remedy the diagnosis proposes, measured on this model.

``bp.check`` says what is wrong and lists remedies; a remedy that cures one network may do
nothing for another (He init for a sigmoid net, a swap of an activation the model does
not have). :func:`prescribe` applies each machine-applicable remedy to a deep copy of the
model (the user's model and its probe are untouched: a probe's hooks go inert on a copy),
checks the copy again on the same batch with the same seed, and reports the effect:
first/last gradient ratio, χ1 where mean field applies, the worst finding, before → after.
Those that help come first; those that do not are kept, marked ``helps=False``, last.
Remedies with the same measured effect on this model (a swap of "any bounded activation"
and of the model's own tanh) are listed once, the first proposed.

Example:
    >>> import torch
    >>> import backprobe as bp
    >>> from backprobe.lab.models import DeepMLP
    >>> _ = torch.manual_seed(0)
    >>> model = DeepMLP(16, 32, 30, 4, activation="sigmoid")
    >>> batch = torch.randn(32, 16)
    >>> best = bp.prescribe(model, batch)[0]
    >>> best.helps, best.remedy.title
    (True, 'ReLU + He init instead of sigmoid')
    >>> best.apply(model)  # in place, the same weights as measured
    >>> [f.kind for f in bp.check(model, batch) if f.kind == "vanishing"]
    []
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .._format import compact_number
from ..errors import RemedyError
from ..remedies.apply import apply_remedy
from .check import CheckResult, check
from .finding import Finding, Remedy
from .thresholds import DiagnoseThresholds


@dataclass(frozen=True)
class Measure:
    """One check, summarised: what a prescription compares before and after.

    Attributes:
        ratio: the verdict's first/last gradient ratio (None when it has none).
        chi1: mean field's χ1 for an MLP-like model, else None.
        worst: the most severe finding at warning or above, or None.
        kinds: the kinds of all findings at warning or above.
    """

    ratio: float | None
    chi1: float | None
    worst: Finding | None
    kinds: frozenset[str]

    @classmethod
    def of(cls, result: CheckResult) -> Measure:
        significant = [f for f in result if f.severity != "info"]
        worst = max(significant, key=lambda f: f.severity_rank) if significant else None
        chi1 = result.mean_field.chi1 if result.mean_field is not None else None
        return cls(result.verdict.ratio, chi1, worst, frozenset(f.kind for f in significant))

    @property
    def rank(self) -> int:
        """-1 with no finding at warning or above, else the worst one's severity rank."""
        return self.worst.severity_rank if self.worst is not None else -1

    @property
    def distance(self) -> float:
        """Decades between the first/last ratio and 1 (inf without a finite ratio)."""
        r = self.ratio
        return abs(math.log10(r)) if r is not None and math.isfinite(r) and r > 0 else math.inf

    @property
    def worst_text(self) -> str:
        return f"{self.worst.severity} {self.worst.kind}" if self.worst else "none"


def ratio_text(ratio: float | None) -> str:
    """A first/last ratio as the verdict writes it; ``?`` without one."""
    return "?" if ratio is None else compact_number(ratio, significant=2, exponent_decimals=0)


@dataclass(frozen=True)
class Prescription:
    """One remedy, measured on a copy of the model.

    Attributes:
        remedy: the remedy (with an action) that was applied.
        before, after: the check of the model as given, and of the copy with the remedy.
        helps: the worst finding is milder after (an error resolved, a warning left is
            still a help), or as severe but some kinds resolved and none introduced.
        resolved: kinds at warning or above before that are gone after.
        introduced: kinds at warning or above after that were not there before.
        seed: the seed the remedy was applied and checked with (:meth:`apply` uses it, so
            the model gets the weights that were measured).
    """

    remedy: Remedy
    before: Measure
    after: Measure
    helps: bool
    resolved: tuple[str, ...]
    introduced: tuple[str, ...]
    seed: int = 0

    def apply(self, model: nn.Module) -> None:
        """Apply the remedy to ``model`` in place, drawn with the seed it was measured with
        (the global random state is left as it was)."""
        _apply_seeded(model, self.remedy, self.seed)

    @property
    def effect(self) -> str:
        """The measured effect in one line: ``first/last ratio 3e-43 → 0.54, χ1 0.0199 →
        0.999, worst error vanishing → warning dead_units`` (and whether it does not help)."""
        parts = [
            f"first/last ratio {ratio_text(self.before.ratio)} → {ratio_text(self.after.ratio)}"
        ]
        if self.before.chi1 is not None and self.after.chi1 is not None:
            parts.append(f"χ1 {self.before.chi1:.3g} → {self.after.chi1:.3g}")
        parts.append(f"worst {self.before.worst_text} → {self.after.worst_text}")
        mark = "" if self.helps else " (does not help)"
        return f"{', '.join(parts)}{mark}"

    def __str__(self) -> str:
        return f"{self.remedy.title}: {self.effect}"


class Prescriptions(list[Prescription]):
    """The prescriptions, best first (a ``list[Prescription]``), with the check of the
    model as given (``before``) and the remedies that could not be applied to it
    (``skipped``: remedy and the reason)."""

    def __init__(
        self,
        prescriptions: Iterable[Prescription],
        before: CheckResult,
        skipped: tuple[tuple[Remedy, str], ...],
    ) -> None:
        super().__init__(prescriptions)
        self.before = before
        self.skipped = skipped

    def annotate(self, findings: Iterable[Finding]) -> list[Finding]:
        """``findings`` (e.g. ``bp.findings(probe)`` of a training run, the ones these
        prescriptions were measured for) with each remedy carrying its measured effect:
        the prescription's :attr:`~Prescription.effect`, or why it does not apply to this
        model. Remedies measured as the same effect as another are left unannotated."""
        effects = {p.remedy.call: p.effect for p in self}
        effects.update({r.call: f"does not apply to this model: {why}" for r, why in self.skipped})
        return [
            dataclasses.replace(
                f,
                remedies=tuple(
                    dataclasses.replace(r, effect=effects[r.call]) if r.call in effects else r
                    for r in f.remedies
                ),
            )
            for f in findings
        ]


def _apply_seeded(model: nn.Module, remedy: Remedy, seed: int) -> None:
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        warnings.simplefilter("ignore")  # a swap's note on functional calls: measured anyway
        apply_remedy(model, remedy)


def _candidates(findings: Iterable[Finding]) -> tuple[list[Remedy], int]:
    """The applicable remedies of ``findings``, most severe finding first, each action
    once; and how many remedies are advice only."""
    seen: set[str] = set()
    applicable: list[Remedy] = []
    advice = 0
    for finding in sorted(findings, key=lambda f: -f.severity_rank):
        for remedy in finding.remedies:
            if not remedy.applicable:
                advice += 1
            elif remedy.call not in seen:
                seen.add(remedy.call)
                applicable.append(remedy)
    return applicable, advice


def _judge(remedy: Remedy, before: Measure, after: Measure, seed: int) -> Prescription:
    resolved = tuple(sorted(before.kinds - after.kinds))
    introduced = tuple(sorted(after.kinds - before.kinds))
    helps = after.rank < before.rank or (
        after.rank == before.rank >= 0 and bool(resolved) and not introduced
    )
    return Prescription(remedy, before, after, helps, resolved, introduced, seed)


def _order(p: Prescription) -> tuple[bool, int, int, float]:
    """Helping first, then the mildest worst finding, the fewest kinds, ratio nearest 1."""
    return (not p.helps, p.after.rank, len(p.after.kinds), p.after.distance)


def prescribe(
    model: nn.Module,
    batch: object = None,
    loss_fn: Callable | None = None,
    *,
    findings: Iterable[Finding] | None = None,
    input_shape: tuple[int, ...] | None = None,
    thresholds: DiagnoseThresholds | None = None,
    seed: int = 0,
) -> Prescriptions:
    """Measure each applicable remedy on a copy of ``model``, best first.

    Args:
        model: the model as it will train; left unchanged.
        batch, loss_fn, input_shape, thresholds, seed: as for ``bp.check``; every check
            (before, and after each remedy) uses the same batch and seed.
        findings: whose remedies to measure (e.g. ``bp.findings(probe)`` of a training
            run); None: those of ``bp.check`` on ``model``.

    Returns:
        :class:`Prescriptions`: one :class:`Prescription` per distinct applicable remedy,
        those that help first; ``.before`` holds the check of the model as given,
        ``.skipped`` the remedies that do not apply to it (an activation it lacks, an
        init its layers refuse) with the reason.
    """

    def run_check(m: nn.Module) -> CheckResult:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return check(
                m, batch, loss_fn, input_shape=input_shape, thresholds=thresholds, seed=seed
            )

    before_result = run_check(model)
    before = Measure.of(before_result)
    remedies, _ = _candidates(before_result if findings is None else findings)
    measured: list[Prescription] = []
    skipped: list[tuple[Remedy, str]] = []
    for remedy in remedies:
        twin = copy.deepcopy(model)
        try:
            _apply_seeded(twin, remedy, seed)
        except RemedyError as exc:
            skipped.append((remedy, str(exc)))
            continue
        after = Measure.of(run_check(twin))
        if any(p.after == after for p in measured):
            continue  # the same effect as a remedy proposed before it
        measured.append(_judge(remedy, before, after, seed))
    return Prescriptions(sorted(measured, key=_order), before_result, tuple(skipped))
