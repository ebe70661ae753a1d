"""Diagnosis: from a run's measurements to findings with causes and remedies.

``diagnose(run)`` (also ``bp.findings``) applies every rule to a recorded run;
``check(model, batch)`` (in :mod:`backprobe.diagnose.check`, also ``bp.check``) diagnoses
a model before training; :class:`DiagnoseThresholds` holds every rule's threshold.
"""

from .finding import Finding, Remedy
from .rules import diagnose
from .thresholds import DiagnoseThresholds

__all__ = ["DiagnoseThresholds", "Finding", "Remedy", "diagnose"]
