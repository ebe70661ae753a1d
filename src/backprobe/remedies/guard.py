"""The guard: act on a gradient spike at the step it happens, before the update.

One call replaces the loop's ``probe.step(loss)`` and ``optimizer.step()``::

    probe = bp.Probe(model)
    guard = bp.Guard(probe, optimizer, on_spike="skip")
    with probe:
        for x, y in loader:
            loss = loss_fn(model(x), y)
            loss.backward()
            guard.step(loss)      # probe.step(loss), then optimizer.step() unless it spiked
            optimizer.zero_grad()

``guard.step`` ends the probe's step (the sentinel reads the loss, the gradient norms and
the output gradient's samples, :mod:`~backprobe.probe.sentinel`), judges it with the spike
detector the findings use (:class:`~backprobe.diagnose.spikes.SpikeDetector`: the same
baseline, the same bars, the same stored values), and on a spike:

- ``on_spike="skip"``: no update. The gradients are set to None and the optimizer is not
  stepped, so neither the weights nor its state (momentum, Adam's moments, step count)
  see the spike;
- ``"clip"``: the gradient is rescaled to the running median of its global norm (times
  ``clip_to``) before the optimizer steps: the usual length, the step's direction;
- ``"scale_lr"``: the optimizer steps with its learning rates times ``lr_factor``, and so
  do the next ``lr_steps`` steps (a later spike extends it). The lower rate is set
  around each ``optimizer.step()`` only and put back at once, so a learning-rate
  scheduler never sees it.

A non-finite loss or gradient is always skipped: no rescaling repairs a NaN. Every action
is stored with the run (``run.events``: step, action, reason) and shown by the report and
``backprobe show``; ``bp.findings`` marks the spikes the guard acted on. With a
``GradScaler`` given to the probe, the guard runs ``scaler.step(optimizer)`` and
``scaler.update()`` in place of ``optimizer.step()``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> import backprobe as bp
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> model = nn.Linear(4, 1)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    >>> probe = bp.Probe(model, every=10, db=None)
    >>> guard = bp.Guard(probe, optimizer, on_spike="skip")
    >>> with probe:
    ...     for step in range(40):
    ...         x, y = torch.randn(8, 4), torch.randn(8, 1)
    ...         if step == 30:
    ...             y[3] = 1e4  # one bad sample
    ...         loss = nn.functional.mse_loss(model(x), y)
    ...         loss.backward()
    ...         stepped = guard.step(loss)
    ...         optimizer.zero_grad()
    >>> [(e.step, e.kind, e.detail["samples"]) for e in probe.events]
    [(30, 'skip', [3])]
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

from ..diagnose._series import fmt
from ..diagnose.spikes import Spike, SpikeDetector
from ..diagnose.thresholds import DiagnoseThresholds
from ..errors import RemedyError
from ..probe.probe import Probe
from ..store.sentinel import LAYERS_KEY, RunEvent

OnSpike = Literal["skip", "scale_lr", "clip"]
ON_SPIKE: tuple[OnSpike, ...] = get_args(OnSpike)


def _reason(spike: Spike) -> str:
    """What the detector saw, in a few words."""
    if spike.nonfinite:
        return "non-finite loss or gradient"
    parts = []
    if math.isfinite(spike.grad_ratio):
        parts.append(f"gradient norm ×{fmt(spike.grad_ratio)}")
    if "layer" in spike.crossed and spike.layers:
        name, ratio = spike.layers[0]
        parts.append(f"{name} ×{fmt(ratio)}")
    return ", ".join(parts) + " its running median"


class Guard:
    """Acts on gradient spikes during training (see the module docstring).

    Args:
        probe: the :class:`~backprobe.Probe` on the model; the guard calls its ``step``.
        optimizer: the optimizer the guard steps (or not).
        on_spike: ``"skip"``, ``"clip"`` or ``"scale_lr"``.
        thresholds: the spike detector's (``spike_*`` of
            :class:`~backprobe.diagnose.thresholds.DiagnoseThresholds`); give the same to
            ``bp.findings`` to judge the run afterwards as the guard did.
        clip_to: ``"clip"`` rescales to this many times the running median norm.
        lr_factor: ``"scale_lr"`` multiplies the learning rates by it …
        lr_steps: … for this many steps from the spike on.
    """

    def __init__(
        self,
        probe: Probe,
        optimizer: torch.optim.Optimizer,
        on_spike: OnSpike = "skip",
        *,
        thresholds: DiagnoseThresholds | None = None,
        clip_to: float = 1.0,
        lr_factor: float = 0.1,
        lr_steps: int = 100,
    ) -> None:
        if not isinstance(probe, Probe):
            raise RemedyError(
                f"Expected a backprobe Probe to guard, but got {type(probe).__name__}: "
                "bp.Guard(bp.Probe(model), optimizer)."
            )
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise RemedyError(
                f"Expected a torch.optim.Optimizer, but got {type(optimizer).__name__}."
            )
        if on_spike not in ON_SPIKE:
            raise RemedyError(f"Expected on_spike to be one of {ON_SPIKE}, got {on_spike!r}.")
        if not (clip_to > 0 and 0 < lr_factor < 1 and lr_steps >= 1):
            raise RemedyError(
                f"Expected clip_to > 0, 0 < lr_factor < 1 and lr_steps >= 1, but got "
                f"clip_to={clip_to!r}, lr_factor={lr_factor!r}, lr_steps={lr_steps!r}."
            )
        self.probe = probe
        self.optimizer = optimizer
        self.on_spike = on_spike
        self.clip_to = float(clip_to)
        self.lr_factor = float(lr_factor)
        self.lr_steps = int(lr_steps)
        self._detector = SpikeDetector(tuple(probe.probe_config[LAYERS_KEY]), thresholds)
        self._slow_until = -1  # last step stepped at the lowered learning rate
        self.actions: list[RunEvent] = []  # what this guard did, in order

    def step(self, loss: torch.Tensor | float | None = None) -> bool:
        """End the training step: ``probe.step(loss)``, then judge it and step the
        optimizer unless it spiked and the guard skips it. Returns whether the optimizer
        stepped. Call it after ``loss.backward()``, in place of ``probe.step(loss)`` and
        ``optimizer.step()``; ``optimizer.zero_grad()`` stays the loop's."""
        self.probe.step(loss)
        last = self.probe.last_sentinel
        assert last is not None  # step() just stored it
        step, row = last
        spike = self._detector.observe(step, row)
        action = None if spike is None else self.on_spike
        if spike is not None and (spike.nonfinite or not math.isfinite(spike.baseline_grad_norm)):
            action = "skip"  # nothing repairs a NaN; no usual norm to clip to yet
        if spike is not None and action == "skip":
            self._act(step, "skip", spike, {})
            self.optimizer.zero_grad(set_to_none=True)
            self._forget_unscaling()
            return False
        if spike is not None and action == "clip":
            target = self.clip_to * spike.baseline_grad_norm
            before = self._clip(target)
            self._act(step, "clip", spike, {"from": before, "to": target})
        elif spike is not None and action == "scale_lr":
            self._slow_until = step + self.lr_steps - 1
            self._act(
                step, "scale_lr", spike, {"factor": self.lr_factor, "until": self._slow_until}
            )
        self._optimizer_step(slow=step <= self._slow_until)
        return True

    @property
    def skipped(self) -> list[int]:
        """Steps whose update this guard skipped."""
        return [e.step for e in self.actions if e.kind == "skip"]

    def _act(self, step: int, kind: str, spike: Spike, detail: dict) -> None:
        detail = {
            "reason": _reason(spike),
            "layers": [name for name, _ in spike.layers],
            "samples": list(spike.samples),
            **detail,
        }
        self.probe.record_event(kind, detail, step=step)
        self.actions.append(RunEvent(step, kind, detail))

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _clip(self, target: float) -> float:
        """Rescale the optimizer's gradients to global norm ``target`` (unscaled first
        under a GradScaler); returns the norm before."""
        scaler = self.probe.scaler
        if scaler is not None and scaler.is_enabled() and self.probe._grads_still_scaled():
            scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self._params(), target)
        return float(norm)

    def _optimizer_step(self, slow: bool) -> None:
        groups = self.optimizer.param_groups
        rates = [g["lr"] for g in groups]
        if slow:
            for g in groups:
                g["lr"] = g["lr"] * self.lr_factor
        try:
            scaler = self.probe.scaler
            if scaler is not None and scaler.is_enabled():
                scaler.step(self.optimizer)
                scaler.update()
            else:
                self.optimizer.step()
        finally:
            if slow:
                for g, rate in zip(groups, rates, strict=True):
                    g["lr"] = rate

    def _forget_unscaling(self) -> None:
        """A skipped step under a GradScaler: forget that its gradients were unscaled,
        as ``scaler.update()`` would, so the next step may unscale its own."""
        scaler = self.probe.scaler
        states = getattr(scaler, "_per_optimizer_states", None)
        if states is not None:
            states.pop(id(self.optimizer), None)
