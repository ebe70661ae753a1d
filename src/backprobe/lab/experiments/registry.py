"""The named experiments of the lab, by name, in the order ``backprobe lab list`` shows."""

from __future__ import annotations

from ...errors import LabConfigError
from .base import Experiment

__all__ = ["EXPERIMENTS", "experiments", "get_experiment", "register"]

EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add ``experiment`` to the registry (its name must be new)."""
    if experiment.name in EXPERIMENTS:
        raise LabConfigError(
            f"Expected a new experiment name, got {experiment.name!r}, which is already "
            "registered; give the experiment another name."
        )
    EXPERIMENTS[experiment.name] = experiment
    return experiment


def _load() -> None:
    """Import the modules that define experiments (they register on import)."""
    from . import feedforward, glorot, isometry, reservoir, sequences  # noqa: F401


def experiments() -> list[Experiment]:
    """Every registered experiment."""
    _load()
    return list(EXPERIMENTS.values())


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; a user error naming the known ones otherwise."""
    _load()
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise LabConfigError(
            f"No lab experiment {name!r}; expected one of {', '.join(EXPERIMENTS)} "
            "(`backprobe lab list` describes them)."
        ) from None
