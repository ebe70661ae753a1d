"""The framework-free core of the training-framework callbacks: one probe, opened when
training starts, stepped once per optimizer step with the mean of the micro-batch losses
seen since the last one, closed when training ends; and what every callback shares (its
options, its ``probe``, the message when its framework is missing)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..diagnose.depth import first_to_last_ratio
from ..diagnose.rules import diagnose
from ..diagnose.verdict import verdict_of
from ..probe import Probe
from ..store import DEFAULT_DB
from ..store.sink import StepSink
from .metrics import DEFAULT_METRICS, POSTCLIP, PRECLIP, LoggedMetrics


def missing_framework(module: str, framework: str, extra: str) -> ImportError:
    """The error of an integration ``module`` imported without its ``framework``: it
    names the ``backprobe[extra]`` install that brings it."""
    return ImportError(
        f"backprobe.integrations.{module} needs {framework}: pip install 'backprobe[{extra}]'"
    )


class ProbeDriver:
    """Holds the options of a probe until the framework hands over the model."""

    def __init__(self, options: dict[str, Any], metrics: LoggedMetrics) -> None:
        self.options = options
        self.metrics = metrics
        self.probe: Probe | None = None
        #: the stored run a resumed training continues (from a checkpoint)
        self.resume: int | None = None
        self._loss: torch.Tensor | None = None
        self._micro_batches = 0

    def start(
        self,
        model: nn.Module,
        *,
        scaler: torch.amp.GradScaler | None,
        root: str | Path,
        name: str,
        config: dict[str, Any],
        first_step: int,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> Probe:
        """Create and attach a probe on ``model``: a new run for every training run, or
        the run of :attr:`resume` continued from ``first_step``. A relative ``db`` lies
        under the framework's ``root`` folder; ``name`` and ``config`` are the
        framework's, unless the options give their own; ``optimizer``, when given, is
        the one stepped after each ``step()`` (the probe measures its updates)."""
        options = {k: v for k, v in self.options.items() if v is not None or k == "db"}
        db = options.get("db")
        if db is not None and not Path(db).is_absolute():
            options["db"] = Path(root) / db
        options["name"] = options.get("name") or name
        options["config"] = {**config, **options.get("config", {})}
        options["sinks"] = [*options.get("sinks", ()), self.metrics]
        resume = self.resume if first_step > 0 else None
        self.probe = Probe(
            model,
            scaler=scaler,
            resume=resume,
            first_step=first_step,
            optimizer=optimizer,
            **options,
        ).attach()
        self.resume = None
        self._loss, self._micro_batches = None, 0
        return self.probe

    def add_loss(self, loss: torch.Tensor | float) -> None:
        """A micro-batch's loss as it is back-propagated; stays on its device."""
        value = loss.detach().float() if isinstance(loss, torch.Tensor) else torch.tensor(loss)
        self._loss = value if self._loss is None else self._loss + value
        self._micro_batches += 1

    def clipping(
        self, preclip: torch.Tensor | float | None, postclip: torch.Tensor | float | None
    ) -> None:
        """The global gradient norm before and after the framework's clipping, stored
        with the step in progress (either left out when None: unknown, or told apart)."""
        if self.probe is None or not self.probe.attached:
            return
        for name, value in ((PRECLIP, preclip), (POSTCLIP, postclip)):
            if value is not None:
                self.probe.record_scalar(name, value)

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

    def close(self, error: BaseException | None = None) -> tuple[dict[str, float], dict[str, str]]:
        """Close the run, finished or failed with ``error``. Returns what the logs get
        about a finished run that recorded a step: the tagged numbers and texts of
        :meth:`~backprobe.integrations.metrics.LoggedMetrics.final` (both empty
        otherwise, and when the run is already closed)."""
        probe = self.probe
        if probe is None or not probe.attached:
            return {}, {}
        if error is not None:
            probe.close("failed", f"{type(error).__name__}: {error}")
            return {}, {}
        probe.close("finished")
        if probe.steps.size == 0:
            return {}, {}
        # bp.verdict(probe), from the findings it judges by (diagnosed once)
        found = diagnose(probe)
        judged = verdict_of(found, int(probe.steps[-1]), probe.layers, first_to_last_ratio(probe))
        return self.metrics.final(judged, found)


class DriverCallback:
    """The base of the framework callbacks: the probe's options until training starts,
    then the probe of the current run. A framework's callback class derives from this
    one first and from the framework's base second.

    Args:
        every: record every N-th optimizer step; by default the probe's overhead budget.
        budget: the overhead allowed (a fraction of the training time), instead.
        db: the run database; a relative path lies under the framework's folder
            (``default_root_dir``, ``output_dir``); None keeps the run in memory.
        name: the run's name; by default the framework's (logger version, ``run_name``).
        include, exclude, unsupported, flush_every, time_every, time_batch, sinks:
            as for :class:`~backprobe.Probe`.
        config: stored with the run, beside the framework's hyper-parameters.
        metrics: which statistics the framework's logs get (see
            :mod:`~backprobe.integrations.metrics`); the run database keeps all of them.
        prefix: first part of their names.
        updates: also measure the update the framework's optimizer applies after each
            recorded step (``update_to_weight`` per layer, Adam's ``adam_step``; see
            :mod:`~backprobe.probe.updates`). Off by default: on a recorded step it holds
            a copy of the probed parameters from before the optimizer step to after it.
    """

    def __init__(
        self,
        every: int | None = None,
        budget: float | None = None,
        db: str | Path | None = DEFAULT_DB,
        name: str | None = None,
        include: str | list[str] | None = None,
        exclude: str | list[str] | None = None,
        unsupported: Literal["ignore", "warn", "error"] = "warn",
        config: dict[str, Any] | None = None,
        flush_every: float = 2.0,
        time_every: int | None = None,
        time_batch: int = 8,
        sinks: Sequence[StepSink] = (),
        metrics: Sequence[str] = DEFAULT_METRICS,
        prefix: str = "backprobe",
        updates: bool = False,
    ) -> None:
        super().__init__()
        self.updates = updates
        options = {
            "every": every,
            "budget": budget,
            "db": db,
            "name": name,
            "include": include,
            "exclude": exclude,
            "unsupported": unsupported,
            "config": config,
            "flush_every": flush_every,
            "time_every": time_every,
            "time_batch": time_batch,
            "sinks": list(sinks),
        }
        self._driver = ProbeDriver(options, LoggedMetrics(prefix, metrics))

    @property
    def probe(self) -> Probe | None:
        """The probe, once training has started."""
        return self._driver.probe

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the run that a resumed training continues."""
        probe = self._driver.probe
        return {"run_id": None if probe is None else probe.run_id}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue the checkpoint's run at the next training start."""
        self._driver.resume = state.get("run_id")
