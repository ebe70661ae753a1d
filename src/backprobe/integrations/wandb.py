"""Weights & Biases: ``WandbSink`` logs the probe's statistics to a W&B run.

::

    import wandb
    from backprobe.integrations import WandbSink

    run = wandb.init(project="my-project")
    probe = bp.Probe(model, sinks=[WandbSink(run)])

Scalars are tagged as :mod:`~backprobe.integrations.scalars` says and logged with
``step=`` the probe's step, so that they sit on the same step axis as the loss the loop
logs with ``run.log(..., step=step)``. The W&B run stays the caller's: the sink never
finishes it. ``WANDB_MODE=offline`` keeps everything on disk (``wandb sync`` later).
"""

from __future__ import annotations

from typing import Any

from ..errors import ProbeConfigError
from ._driver import missing_framework
from .scalars import StepScalars

try:
    import wandb
except ImportError as error:
    raise missing_framework("wandb", "wandb", "wandb") from error


class WandbSink(StepScalars):
    """Logs each recorded step to a W&B run.

    Args:
        run: the run ``wandb.init()`` returned; default the active run (``wandb.run``).
        prefix: first part of every key.
    """

    def __init__(self, run: Any = None, *, prefix: str = "backprobe") -> None:
        super().__init__(prefix)
        run = wandb.run if run is None else run
        if run is None or not hasattr(run, "log"):
            raise ProbeConfigError(
                f"Expected a W&B run, got {type(run).__name__}. Start one with "
                "run = wandb.init(...) and pass it: WandbSink(run)."
            )
        self.run = run

    def write(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def flush(self) -> None:
        """W&B writes in its own process; nothing is held here."""
