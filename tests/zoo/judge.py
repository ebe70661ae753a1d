"""The diagnosis of each zoo case, and how it is scored against what was planted.

``examine(case)`` runs the case as a user would: ``bp.check`` on one batch at
initialisation, or a short seeded training run with a probe and ``bp.findings`` /
``bp.verdict`` on it. ``score`` compares the findings with the case: a planted case is
*found* when a finding of the planted kind names the planted place; a finding at warning
or above is *correct* when its kind is the planted one or follows from it (``also``), and
*false* otherwise (every such finding on a healthy case is false).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache
from typing import Literal

import torch

import backprobe as bp

from .architectures import ARCHITECTURES, loss_of
from .plants import HEALTHY, PLANTED, Case

CASES: dict[str, Case] = {case.name: case for case in (*PLANTED, *HEALTHY)}
SIGNIFICANT = ("warning", "error")


@dataclass(frozen=True)
class Judgment:
    """What backprobe said about one case: its findings and its one-line verdict."""

    findings: tuple[bp.Finding, ...]
    verdict: bp.Verdict

    @property
    def significant(self) -> list[bp.Finding]:
        return [f for f in self.findings if f.severity in SIGNIFICANT]


def named_layers(finding: bp.Finding) -> list[str]:
    """The layers a finding points at: its ``layers``, and the recurrent (sub-)layer of a
    through-time finding."""
    where = finding.where or {}
    named = [str(n) for n in where.get("layers", [])]
    if "recurrent" in where:
        named.append(str(where["recurrent"]))
    return named


def _train(case: Case) -> Judgment:
    assert case.train is not None
    arch = ARCHITECTURES[case.architecture]
    model = case.build()
    optimizers = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
    opt = optimizers[case.train.optimizer](model.parameters(), lr=case.train.lr)
    # every step: the default budget would pick the recorded steps by wall-clock time
    probe = bp.Probe(model, db=None, name=case.name, every=1)
    with probe:
        for step in range(case.train.steps):
            loss = loss_of(model, arch.batch(step), arch.loss_fn)
            loss.backward()
            probe.step(loss)
            opt.step()
            opt.zero_grad()
    update: Literal["sgd", "adam"] = "adam" if case.train.optimizer == "adam" else "sgd"
    findings = bp.findings(probe, lr=case.train.lr, optimizer=update)
    return Judgment(tuple(findings), bp.verdict(probe, lr=case.train.lr, optimizer=update))


@cache
def examine(name: str) -> Judgment:
    """The case's judgment (cached: the zoo's tests and its table share one run each)."""
    case = CASES[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small configs and planted cases warn by design
        if case.train is not None:
            return _train(case)
        arch = ARCHITECTURES[case.architecture]
        result = bp.check(case.build(), arch.batch(0), arch.loss_fn)
        return Judgment(tuple(result), result.verdict)


def found(case: Case, judgment: Judgment) -> list[bp.Finding]:
    """The findings at warning or above of the planted kind that name the planted place."""
    return [
        f
        for f in judgment.significant
        if f.kind == case.expected and case.in_place(named_layers(f))
    ]


def false_findings(case: Case, judgment: Judgment) -> list[bp.Finding]:
    """Findings at warning or above whose kind the case does not explain."""
    allowed = () if case.expected is None else (case.expected, *case.also)
    return [f for f in judgment.significant if f.kind not in allowed]


@dataclass(frozen=True)
class Score:
    """Recall over the planted cases and precision over every finding at warning or above."""

    planted: int
    found: int
    findings: int
    correct: int

    @property
    def recall(self) -> float:
        return self.found / self.planted if self.planted else 1.0

    @property
    def precision(self) -> float:
        return self.correct / self.findings if self.findings else 1.0


def score(names: list[str] | None = None) -> Score:
    chosen = [CASES[n] for n in (names or list(CASES))]
    planted = [c for c in chosen if c.expected is not None]
    hits = sum(bool(found(c, examine(c.name))) for c in planted)
    total = correct = 0
    for case in chosen:
        judgment = examine(case.name)
        total += len(judgment.significant)
        correct += len(judgment.significant) - len(false_findings(case, judgment))
    return Score(len(planted), hits, total, correct)
