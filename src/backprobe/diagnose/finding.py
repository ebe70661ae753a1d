"""What a diagnosis says: one :class:`Finding` per problem, with its numbers and its cure.

A finding is plain data (JSON round-trip through :meth:`Finding.to_dict` and
:meth:`Finding.from_dict`) so that the run DB stores it and the terminal, HTML and
TensorBoard reports read it back after the training process is gone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from ..errors import DiagnoseError

Kind = Literal[
    "vanishing",
    "exploding",
    "vanishing_through_time",
    "exploding_through_time",
    "saturation",
    "dead_units",
    "nonfinite",
    "no_gradient",
    "learning_rate",
    "initialisation",
    "plateau",
    "spike",
    "logit_growth",
    "entropy_collapse",
    "stream_growth",
]
Severity = Literal["info", "warning", "error"]

KINDS: tuple[Kind, ...] = get_args(Kind)
#: Severities, mildest first; their order is what ``severity_rank`` compares.
SEVERITIES: tuple[Severity, ...] = get_args(Severity)


#: One call of an action: a ``backprobe.remedies`` function's name and its keyword
#: arguments after the model (JSON values: strings, numbers, booleans, tuples of them).
Step = tuple[str, dict[str, Any]]


def _literal(value: object) -> str:
    """``value`` as Python source: strings double-quoted, sequences as tuples."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple | list):
        items = ", ".join(_literal(v) for v in value)
        return f"({items},)" if len(value) == 1 else f"({items})"
    return repr(value)


def action_call(action: tuple[Step, ...]) -> str:
    """The code a user runs for ``action``: one ``backprobe.remedies`` call per step, in
    order, joined by ``; ``."""
    return "; ".join(
        f"backprobe.remedies.{name}(model"
        + "".join(f", {key}={_literal(value)}" for key, value in kwargs.items())
        + ")"
        for name, kwargs in action
    )


def _tuples(value: object) -> object:
    """JSON arrays back to tuples (a stored action reads as it was written)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _steps(action: object) -> tuple[Step, ...]:
    """``action`` as a tuple of (name, kwargs) steps, JSON arrays in the kwargs as tuples."""
    if not (
        isinstance(action, tuple | list)
        and all(
            isinstance(step, tuple | list)
            and len(step) == 2
            and isinstance(step[0], str)
            and isinstance(step[1], dict)
            for step in action
        )
    ):
        raise DiagnoseError(
            f"Expected a remedy action as (function name, keyword arguments) pairs, e.g. "
            f"(('init_', {{'scheme': 'he_normal'}}),), but got {action!r}."
        )
    return tuple((name, {str(k): _tuples(v) for k, v in kwargs.items()}) for name, kwargs in action)


@dataclass(frozen=True)
class Remedy:
    """One change that addresses a finding.

    ``call`` is the exact code to run (a backprobe or torch call), ``why`` says in a
    sentence what it changes about the gradients. ``action``, when not empty, makes the
    remedy machine-applicable: ``backprobe.remedies`` calls on the model, in order, as
    ``(function name, keyword arguments)`` (:func:`backprobe.remedies.apply_remedy`
    applies them, ``bp.prescribe`` measures them); ``call`` is then derived from it, so
    that what is shown and what is applied cannot differ. A remedy without an action is
    advice for the user's loop or architecture (clipping, the optimizer, skip
    connections). ``effect`` is what the remedy did to a copy of the model, measured by
    :meth:`backprobe.diagnose.prescribe.Prescriptions.annotate` ("first/last ratio 1e-41
    → 0.54, …"); empty when it was not measured.
    """

    title: str
    call: str = ""
    why: str = ""
    action: tuple[Step, ...] = ()
    effect: str = ""

    def __post_init__(self) -> None:
        if not self.action:
            if not self.call:
                raise DiagnoseError(
                    f"Expected a call or an action for remedy {self.title!r}, but got "
                    "neither; pass the code to run."
                )
            return
        steps = _steps(self.action)
        call = action_call(steps)
        if self.call and self.call != call:
            raise DiagnoseError(
                f"Expected remedy {self.title!r}'s call to be derived from its action "
                f"({call!r}), but got {self.call!r}; pass the action alone."
            )
        object.__setattr__(self, "action", steps)
        object.__setattr__(self, "call", call)

    @classmethod
    def applying(cls, title: str, why: str, *steps: Step) -> Remedy:
        """A machine-applicable remedy: ``steps`` are its action, its call is derived."""
        return cls(title, why=why, action=steps)

    @property
    def applicable(self) -> bool:
        """Whether :func:`backprobe.remedies.apply_remedy` can apply it to a model."""
        return bool(self.action)

    def to_dict(self) -> dict:
        """A JSON-ready dict; the action, when there is one, as ``[[name, {kwargs}], …]``
        (the call is kept too, for readers of the stored JSON)."""
        data: dict[str, Any] = {"title": self.title, "call": self.call, "why": self.why}
        if self.action:
            data["action"] = [[name, dict(kwargs)] for name, kwargs in self.action]
        if self.effect:
            data["effect"] = self.effect
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Remedy:
        """Inverse of :meth:`to_dict`; the call of a remedy stored with an action is
        derived again from the action (the one source of truth)."""
        action = data.get("action") or ()
        call = "" if action else data.get("call", "")
        return cls(
            data.get("title", ""), call, data.get("why", ""), _steps(action), data.get("effect", "")
        )


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
        data["remedies"] = [r.to_dict() for r in self.remedies]
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
            remedies=tuple(Remedy.from_dict(r) for r in data.get("remedies") or ()),
            references=tuple(data.get("references") or ()),
            step=data.get("step"),
        )
