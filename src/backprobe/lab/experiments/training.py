"""How an experiment trains: the lab's loop with evaluations, stored metrics and a live
report.

Each step: forward, loss (+ α·Ω), backward, clip (the probe records the norms before and
after, and then the clipped gradients), ``probe.step(loss)``, optimiser step (the loop of
:mod:`backprobe.lab.training`). Evaluation runs every ``eval_every`` steps and at the
last step, *before* that step's update, and its metrics are stored with the run
(``probe.record_scalar``) so that the run database holds the learning curve and
``backprobe lab table`` the final value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ...diagnose.verdict import format_ratio, verdict
from ...errors import LabConfigError
from ...probe import Probe
from ...remedies.optim import build_optimizer as build_optimizer_from_spec
from ...remedies.regularizer import pascanu_omega
from ..training import LossFn, Trainee, train_lockstep
from .base import RunContext

__all__ = ["Loop", "OptimizerName", "build_optimizer", "train"]

#: Seconds between two live reports of a run (progress bars need no more).
_REPORT_EVERY_S = 0.25

#: The optimisers an experiment's config may name (its ``optimizer`` setting).
OptimizerName = Literal["sgd", "adam", "rmsprop"]


@dataclass(frozen=True)
class Loop:
    """How long and how a model trains.

    ``clip`` > 0 rescales the global gradient norm to at most ``clip`` (Pascanu et al.'s
    Algorithm 1); ``omega`` > 0 adds ``omega · Ω`` to the loss (their eq. 9), which needs
    a ``forward_unrolled`` model. ``record_every``: the probe records every N-th step and
    the evaluation steps.
    """

    steps: int
    eval_every: int
    record_every: int
    clip: float = 0.0
    omega: float = 0.0


def build_optimizer(
    name: OptimizerName,
    params: Iterator[nn.Parameter] | list[nn.Parameter],
    lr: float,
    momentum: float,
) -> torch.optim.Optimizer:
    """``sgd`` (with ``momentum``), ``adam`` or ``rmsprop``, through the remedies' spec
    (``"sgd:lr=0.01,momentum=0.9"``), so that a run's config names what a finding would."""
    spec = f"{name}:lr={lr!r}" + ("" if name == "adam" else f",momentum={momentum!r}")
    return build_optimizer_from_spec(spec, list(params))


def _health(probe: Probe) -> str:
    """The verdict's status and first/last layer gradient ratio at the last recorded
    step; for a recurrent model also ||dL/dh_1|| / ||dL/dh_T|| of its first recurrent
    layer at the last step with a time profile ("through time")."""
    v = verdict(probe)
    text = v.status if v.ratio is None else f"{v.status} {format_ratio(v.ratio)}"
    for name in probe.recurrent_layers[:1]:
        rows = probe.time_profile(name)  # [S, T]
        measured = rows[np.isfinite(rows).all(axis=1)]
        if measured.size and measured[-1, -1] > 0:
            text += f", through time {format_ratio(float(measured[-1, 0] / measured[-1, -1]))}"
    return text


def _loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], omega: float) -> LossFn:
    """The loop's loss: ``loss_fn(model(x), y)``, plus ``omega · Ω`` when ``omega`` > 0."""

    def plain(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss = loss_fn(model(x), y)
        return loss, loss

    def regularised(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out, unrolled = model.forward_unrolled(x)  # type: ignore[operator]  # checked by train
        task_loss = loss_fn(out, y)
        return task_loss, task_loss + omega * pascanu_omega(task_loss, unrolled)

    return regularised if omega > 0 else plain


def train(
    model: nn.Module,
    ctx: RunContext,
    loop: Loop,
    optimizer: torch.optim.Optimizer,
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    evaluate: Callable[[], dict[str, float]],
) -> dict[str, float]:
    """Train ``model`` for ``loop.steps`` steps with the probe attached; return the
    evaluations' metrics (the latest value of each) plus ``train_loss`` (mean of the last
    10% of steps), ``max_grad_norm`` (largest global norm before clipping) and
    ``grad_ratio`` (first/last layer gradient norm at the last recorded step).

    ``batch(step)`` gives (x, y); ``loss_fn(model(x), y)`` the scalar loss;
    ``evaluate()`` runs in ``torch.no_grad`` and eval mode and returns named metrics.
    A non-finite loss ends training early (an exploding run): that step makes no update,
    and the next step, recorded whatever the schedule, evaluates the model and stores its
    metrics with ``diverged`` = 1 (the run's post-mortem).

    Raises:
        LabConfigError: ``loop.omega`` > 0 for a model without ``forward_unrolled``.
    """
    last = loop.steps - 1
    if loop.omega > 0 and not hasattr(model, "forward_unrolled"):
        raise LabConfigError(
            f"Expected a model with forward_unrolled (a RecurrentModel) for omega > 0, got "
            f"{type(model).__name__}; set omega=0 or train a RecurrentModel."
        )

    def schedule(step: int) -> bool:
        # After a divergence, the next step is recorded: the run's post-mortem.
        return (
            trainee.post_mortem
            or step % loop.record_every == 0
            or step % loop.eval_every == 0
            or step == last
        )

    # Time profiles (||dL/dh_t||, Jacobian decay) at the evaluation steps.
    probe = Probe(
        model,
        every=schedule,
        db=ctx.db,
        name=ctx.name,
        config=ctx.stored_config,
        time_every=lambda step: step % loop.eval_every == 0 or step == last,
    )
    trainee = Trainee(model, optimizer, probe, _loss(loss_fn, loop.omega), clip=loop.clip)
    metrics: dict[str, float] = {}
    tail: list[float] = []
    max_norm = 0.0
    reported = 0.0
    health = ""

    def measure(step: int, trainee: Trainee) -> None:
        nonlocal max_norm
        if step % loop.eval_every == 0 or step == last or trainee.post_mortem:
            model.eval()
            with torch.no_grad():
                evaluated = evaluate()
            model.train()
            metrics.update(evaluated)  # metrics only measured once (at init) stay
            for name, metric in evaluated.items():
                probe.record_scalar(name, metric)
        if trainee.post_mortem:
            probe.record_scalar("diverged", 1.0)
        # The global norm before clipping (clip_grad_norm_ records it as clip/pre_norm).
        norm = trainee.grad_norm
        max_norm = max(max_norm, norm) if math.isfinite(norm) else math.inf
        probe.record_scalar("max_grad_norm", max_norm)

    def report(step: int, trainee: Trainee, recorded: bool) -> None:
        nonlocal health, reported
        if recorded:
            health = _health(probe)
        if step >= loop.steps - max(1, loop.steps // 10):
            tail.append(trainee.loss_value)
        now = time.monotonic()
        if now - reported > _REPORT_EVERY_S or step == last:
            ctx.report(step + 1, loop.steps, trainee.loss_value, health)
            reported = now

    train_lockstep(
        [trainee],
        loop.steps,
        batch,
        before_probe_step=measure,
        after_update=report,
        measure_norm=True,
    )
    ratio = verdict(probe).ratio
    ctx.report(loop.steps, loop.steps, trainee.loss_value, health)
    return {
        **metrics,
        "train_loss": sum(tail) / len(tail) if tail else math.nan,
        "grad_ratio": math.nan if ratio is None else ratio,
        "diverged": float(trainee.diverged_at is not None),
        "max_grad_norm": max_norm,
    }
