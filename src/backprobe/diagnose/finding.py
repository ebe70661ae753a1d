"""What a diagnosis says: one :class:`Finding` per problem, with its numbers and its cure.

A finding is plain data (JSON round-trip through :meth:`Finding.to_dict` and
:meth:`Finding.from_dict`) so that the run DB stores it and the terminal, HTML and
TensorBoard reports read it back after the training process is gone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

from ..errors import DiagnoseError

Kind = Literal[
    "vanishing",
    "exploding",
    "vanishing_through_time",
    "exploding_through_time",
    "saturation",
    "dead_units",
    "nonfinite",
    "learning_rate",
    "initialisation",
    "plateau",
]
Severity = Literal["info", "warning", "error"]

KINDS: tuple[Kind, ...] = get_args(Kind)
#: Severities, mildest first; their order is what ``severity_rank`` compares.
SEVERITIES: tuple[Severity, ...] = get_args(Severity)


@dataclass(frozen=True)
class Remedy:
    """One change that addresses a finding.

    ``call`` is the exact code to run (a backprobe or torch call), ``why`` says in a
    sentence what it changes about the gradients.
    """

    title: str
    call: str
    why: str = ""


@dataclass(frozen=True)
class Finding:
    """One diagnosed problem.

    Attributes:
        kind: what went wrong (one of :data:`KINDS`).
        severity: ``info`` < ``warning`` < ``error``.
        summary: one line a user reads first, with the key number in it.
        where: where it happens: ``{"layers": [names]}`` and/or ``{"time_steps": [t]}``,
            ``{"step": s}`` for the training step.
        evidence: the measured numbers behind the finding, by name.
        cause: the mechanism in plain words.
        remedies: ranked, most effective first.
        references: papers or docs, short form ("Hochreiter 1991").
        step: the training step the finding is about, or None for the whole run / a check.
    """

    kind: Kind
    severity: Severity
    summary: str
    where: dict = field(default_factory=dict)
    evidence: dict = field(default_factory=dict)
    cause: str = ""
    remedies: tuple[Remedy, ...] = ()
    references: tuple[str, ...] = ()
    step: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DiagnoseError(f"Expected a finding kind in {KINDS}, but got {self.kind!r}.")
        if self.severity not in SEVERITIES:
            raise DiagnoseError(f"Expected a severity in {SEVERITIES}, but got {self.severity!r}.")

    @property
    def severity_rank(self) -> int:
        """0 for info, 1 for warning, 2 for error."""
        return SEVERITIES.index(self.severity)

    def to_dict(self) -> dict:
        """A JSON-ready dict (remedies as dicts, tuples as lists)."""
        data = asdict(self)
        data["remedies"] = [asdict(r) for r in self.remedies]
        data["references"] = list(self.references)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Finding:
        """Inverse of :meth:`to_dict`."""
        return cls(
            kind=data["kind"],
            severity=data["severity"],
            summary=data.get("summary", ""),
            where=dict(data.get("where") or {}),
            evidence=dict(data.get("evidence") or {}),
            cause=data.get("cause", ""),
            remedies=tuple(Remedy(**r) for r in data.get("remedies") or ()),
            references=tuple(data.get("references") or ()),
            step=data.get("step"),
        )
