"""Errors a user can act on.

Every error that comes from what the user gave us (a model, a path, a run id, an option)
derives from :class:`BackprobeError`. The CLI prints such errors as one line and exits
non-zero; anything else is a bug in backprobe and keeps its traceback.
"""

from __future__ import annotations


class BackprobeError(Exception):
    """Base class for errors caused by user input; the message says what to do."""


class ProbeConfigError(BackprobeError, ValueError):
    """A Probe was given a model, filter or option it cannot use."""


class UnsupportedModuleError(BackprobeError, TypeError):
    """A selected module cannot be probed and the probe was told ``unsupported="error"``."""


class RunDatabaseError(BackprobeError):
    """A run database is missing, corrupt, foreign, of a newer schema, or on storage that
    cannot be written (for a writer)."""


class ReportPathError(BackprobeError, ValueError):
    """A report cannot be written where it was asked to be: a folder, or read-only
    storage."""


class RunNotFoundError(BackprobeError, LookupError):
    """No run with the given id or name is stored in the run database."""


class TheoryInputError(BackprobeError, ValueError):
    """A theory function was given a matrix, activation, module or number it cannot use."""


class FixedPointError(TheoryInputError):
    """A mean-field variance map neither converged nor diverged within its iterations."""


class RecurrentInputError(BackprobeError, ValueError):
    """An unrolled recurrent pass was given a module, input or state it cannot reproduce."""


class RemedyError(BackprobeError, ValueError):
    """A remedy (init, swap, clipping, truncated BPTT, regulariser, ESN, optimiser spec) was
    given a model, scheme, option or spec it cannot apply."""


class LabConfigError(BackprobeError, ValueError):
    """A lab experiment was asked for by an unknown name, variant or setting; a setting
    was given a value of the wrong type or out of its range; or a lab model, task or
    training run was built with options it cannot use."""


class LabDefinitionError(LabConfigError, TypeError):
    """An experiment is defined with a config that is no dataclass, overrides fields its
    config lacks, or expects results of variants it does not have."""


class DiagnoseError(BackprobeError, ValueError):
    """A finding, threshold or diagnosis option was given a value it cannot take."""


class CheckInputError(BackprobeError, ValueError):
    """``bp.check`` / ``backprobe check`` was given a model, batch, factory or shape it
    cannot use."""
