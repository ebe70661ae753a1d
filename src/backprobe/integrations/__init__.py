"""Thin adapters over the Probe for the places people train and look.

::

    from backprobe.integrations import (
        BackprobeCallback,         # lightning.Trainer
        BackprobeTrainerCallback,  # transformers.Trainer
        TensorBoardSink,           # torch.utils.tensorboard.SummaryWriter
        WandbSink,                 # a W&B run
        MLflowSink,                # an MLflow run
    )

Statistics under ``torch.distributed`` (DDP, FSDP2) are the probe's own business:
:mod:`backprobe.probe.distributed`.

Each name is imported on first use, with its framework: importing ``backprobe`` or this
package imports none of them, so that none is a dependency of the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:
    from .lightning import BackprobeCallback
    from .mlflow import MLflowSink
    from .tensorboard import TensorBoardSink
    from .transformers import BackprobeTrainerCallback
    from .wandb import WandbSink

#: Each public name and the module (named after its framework) that defines it.
_LAZY = {
    "BackprobeCallback": ".lightning",
    "BackprobeTrainerCallback": ".transformers",
    "TensorBoardSink": ".tensorboard",
    "WandbSink": ".wandb",
    "MLflowSink": ".mlflow",
}

__all__ = [
    "BackprobeCallback",
    "BackprobeTrainerCallback",
    "MLflowSink",
    "TensorBoardSink",
    "WandbSink",
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)
