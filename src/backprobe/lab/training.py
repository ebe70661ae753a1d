"""The lab's one training loop: networks trained in lockstep, each with its probe attached.

Every step draws one batch, and every network still training in turn makes its forward
and backward pass, has its gradient clipped (optional; the probe records the norms
before and after, and then the clipped gradients), is recorded by its probe, and takes
its optimiser step. A network whose loss is not finite makes no update with it and
stops after one more step, its post-mortem (recorded when its probe's schedule asks for
it). Callers add what they measure through two hooks: one before the probe's step (the
gradients of the step are there: evaluate before the update, store scalars) and one
after the update (progress, evaluation of the updated model, early stopping).

``backprobe demo`` (both chapters) and ``backprobe lab`` experiments train with it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..probe import Probe
from ..remedies.clipping import clip_grad_norm_, global_grad_norm
from ..remedies.guard import Guard

__all__ = ["Trainee", "cross_entropy_loss", "lab_threads", "train_lockstep"]

#: ``batch(step)`` → (inputs, targets), shared by every network of the loop.
BatchFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]
#: ``loss(model, x, y)`` → (the task's loss, the loss to backpropagate: the task's loss
#: plus any regulariser).
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def cross_entropy_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The classification loss with nothing added: ``F.cross_entropy(model(x), y)``."""
    loss = F.cross_entropy(model(x), y)
    return loss, loss


@dataclass(eq=False)
class Trainee:
    """One network of the loop, and what the loop measured of it so far.

    ``clip`` > 0 rescales its global gradient norm to at most ``clip`` before the probe
    records the step (Pascanu et al.'s Algorithm 1). A ``guard`` (over the trainee's probe
    and optimizer) ends each step in their place and may skip or slow the update on a
    spike (:class:`~backprobe.remedies.guard.Guard`). The loop fills in ``loss_value``
    (the task loss of the latest step), ``grad_norm`` (the global gradient norm of the
    latest step before clipping, when clipping or ``measure_norm``), ``steps`` (steps
    trained), ``diverged_at`` (the step whose loss was not finite) and ``stopped``
    (which a hook may set to end this network's training after the current step).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    probe: Probe
    loss: LossFn = cross_entropy_loss
    clip: float = 0.0
    guard: Guard | None = None
    loss_value: float = math.nan
    grad_norm: float = math.nan
    steps: int = 0
    diverged_at: int | None = None
    stopped: bool = False

    @property
    def post_mortem(self) -> bool:
        """Whether the step in progress comes after a divergence (the last one it makes)."""
        return self.diverged_at is not None


#: ``hook(step, trainee)``, run for each network at each step it trains.
StepHook = Callable[[int, Trainee], None]
#: ``hook(step, trainee, recorded)``: ``recorded`` says whether the probe recorded the step.
UpdateHook = Callable[[int, Trainee, bool], None]


def _no_hook(step: int, trainee: Trainee, recorded: bool = False) -> None:
    """A hook with nothing to add."""


@contextlib.contextmanager
def lab_threads() -> Iterator[None]:
    """One intra-op thread while the lab trains, restored afterwards.

    The lab's matrices are tiny (batch x 64 x 64): splitting them over threads costs more
    than it gains, parallel lab jobs are separate processes, and on a busy 2-core CI
    machine the thread pool's spin-waits made a step several times slower (measured: 4 ms
    alone vs up to 35 ms per 50-layer step).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _backward(
    step: int, trainee: Trainee, x: torch.Tensor, y: torch.Tensor, measure_norm: bool
) -> torch.Tensor:
    """One network's forward and backward pass and its clipping; returns its task loss."""
    task_loss, loss = trainee.loss(trainee.model, x, y)
    loss.backward()
    trainee.loss_value = float(task_loss.detach())
    if trainee.diverged_at is None and not math.isfinite(trainee.loss_value):
        trainee.diverged_at = step  # no update with it; the next step is the post-mortem
    params = [p for p in trainee.model.parameters() if p.requires_grad]
    if trainee.clip > 0:
        clipped = clip_grad_norm_(params, trainee.clip, probe=trainee.probe)
        trainee.grad_norm = float(clipped.pre_norm)
    elif measure_norm:
        trainee.grad_norm = float(global_grad_norm(params))
    return task_loss


def train_lockstep(
    trainees: Sequence[Trainee],
    steps: int,
    batch: BatchFn,
    *,
    before_probe_step: StepHook = _no_hook,
    after_update: UpdateHook = _no_hook,
    measure_norm: bool = False,
) -> None:
    """Train ``trainees`` for ``steps`` steps on the same batches, interleaved, with their
    probes attached (and closed at the end: each run is stored as finished).

    Args:
        trainees: the networks, trained in this order at every step.
        steps: steps to train; a network in its post-mortem may make one more.
        batch: ``batch(step)`` → (x, y), drawn once per step for every network.
        before_probe_step: runs after the backward pass and the clipping, before the
            probe's step and the update.
        after_update: runs after the optimiser's step (not after a post-mortem step).
        measure_norm: measure ``Trainee.grad_norm`` even without clipping.
    """
    with contextlib.ExitStack() as stack:
        for trainee in trainees:
            stack.enter_context(trainee.probe)
        for step in range(steps + 1):
            training = [t for t in trainees if not t.stopped and (step < steps or t.post_mortem)]
            if not training:
                break
            x, y = batch(step)
            for trainee in training:
                post_mortem = trainee.post_mortem
                task_loss = _backward(step, trainee, x, y, measure_norm)
                before_probe_step(step, trainee)
                guard = None if post_mortem else trainee.guard
                recorded = trainee.probe.recording
                if guard is not None:
                    guard.step(task_loss)  # the probe's step and the update
                else:
                    trainee.probe.step(task_loss)
                trainee.steps = step + 1
                if post_mortem:
                    trainee.stopped = True
                    continue
                if trainee.diverged_at is None and guard is None:
                    trainee.optimizer.step()
                trainee.optimizer.zero_grad(set_to_none=True)
                after_update(step, trainee, recorded)
