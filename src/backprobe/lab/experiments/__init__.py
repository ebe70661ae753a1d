"""The lab's named experiments: registry, typed settings, runner and results table.

``backprobe lab list`` shows :func:`experiments`; ``backprobe lab run NAME`` calls
:func:`run_experiment`; ``backprobe lab table`` prints :func:`results_rows` from the run
database, where every run is stored with its config.
"""

from __future__ import annotations

from .base import Expectation, Experiment, Row, RunContext
from .registry import EXPERIMENTS, experiments, get_experiment, register
from .runner import Job, JobResult, plan, run_experiment
from .settings import make_config, parse_settings

__all__ = [
    "EXPERIMENTS",
    "Expectation",
    "Experiment",
    "Job",
    "JobResult",
    "Row",
    "RunContext",
    "experiments",
    "get_experiment",
    "make_config",
    "parse_settings",
    "plan",
    "register",
    "run_experiment",
]
