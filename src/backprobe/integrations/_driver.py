"""The framework-free core of the training-framework callbacks: one probe, opened when
training starts, stepped once per optimizer step with the mean of the micro-batch losses
seen since the last one, closed when training ends; and what every callback shares (its
options, its ``probe``, the message when its framework is missing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ProbeConfigError
from ..probe import Probe
from ..probe.schedule import Schedule
from ..store import DEFAULT_DB


def missing_framework(module: str, framework: str, extra: str) -> ImportError:
    """The error of an integration ``module`` imported without its ``framework``: it
    names the ``backprobe[extra]`` install that brings it."""
    return ImportError(
        f"backprobe.integrations.{module} needs {framework}: pip install 'backprobe[{extra}]'"
    )


class ProbeDriver:
    """Holds the options of a probe until the framework hands over the model."""

    def __init__(
        self, every: int | Schedule, db: str | Path | None, name: str | None, options: dict
    ) -> None:
        self.options: dict[str, Any] = {"every": every, "db": db, "name": name, **options}
        if "scaler" in self.options:
            raise ProbeConfigError(
                "Expected no scaler option: the callback takes the trainer's own GradScaler."
            )
        self.probe: Probe | None = None
        self._loss: torch.Tensor | None = None
        self._micro_batches = 0

    def start(self, model: nn.Module, scaler: torch.amp.GradScaler | None = None) -> Probe:
        """Create and attach a probe on ``model``: a new run for every training run."""
        self.probe = Probe(model, scaler=scaler, **self.options).attach()
        self._loss, self._micro_batches = None, 0
        return self.probe

    def add_loss(self, loss: torch.Tensor | float) -> None:
        """A micro-batch's loss as it is back-propagated; stays on its device."""
        value = loss.detach().float() if isinstance(loss, torch.Tensor) else torch.tensor(loss)
        self._loss = value if self._loss is None else self._loss + value
        self._micro_batches += 1

    def step(self, *, mean: bool = False) -> bool:
        """One optimizer step is about to happen: record it if the schedule says so. The
        stored loss is the sum of the micro-batch losses added since the last step (they
        are already divided by the accumulation count) or their ``mean``."""
        if self.probe is None or not self.probe.attached:
            return False
        loss = self._loss
        if loss is not None and mean:
            loss = loss / self._micro_batches
        self._loss, self._micro_batches = None, 0
        return self.probe.step(loss)

    def close(self, error: BaseException | None = None) -> None:
        """Close the run, finished or failed with ``error``."""
        if self.probe is not None:
            if error is None:
                self.probe.close("finished")
            else:
                self.probe.close("failed", f"{type(error).__name__}: {error}")


class DriverCallback:
    """The base of the framework callbacks: the probe's options until training starts,
    then the probe of the current run. A framework's callback class derives from this
    one first and from the framework's base second."""

    def __init__(
        self,
        every: int | Schedule = 1,
        db: str | Path | None = DEFAULT_DB,
        name: str | None = None,
        **probe_options: Any,
    ) -> None:
        super().__init__()
        self._driver = ProbeDriver(every, db, name, probe_options)

    @property
    def probe(self) -> Probe | None:
        """The probe, once training has started."""
        return self._driver.probe
