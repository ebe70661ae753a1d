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

import importlib
from typing import TYPE_CHECKING

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


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'backprobe.integrations' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
