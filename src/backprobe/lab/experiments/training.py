"""The one training loop of the lab: probe attached, clipping and Ω optional, live report.

Each step: forward, loss (+ α·Ω), backward, clip (the probe records the norms before and
after, and then the clipped gradients), ``probe.step(loss)``, optimiser step.
Evaluation runs every ``eval_every`` steps and at the last step, *before* that step's
update, and its metrics are stored with the run (``probe.record_scalar``) so that the
run database holds the learning curve and ``backprobe lab table`` the final value.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...diagnose.verdict import format_ratio, verdict
from ...probe import Probe
from ...remedies.clipping import clip_grad_norm_, global_grad_norm
from ...remedies.optim import build_optimizer as build_optimizer_from_spec
from .base import RunContext

__all__ = ["Loop", "build_optimizer", "lab_threads", "train"]

#: Seconds between two live reports of a run (progress bars need no more).
_REPORT_EVERY_S = 0.25


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


@contextlib.contextmanager
def lab_threads() -> Iterator[None]:
    """One intra-op thread while the lab trains (its matrices are tiny, and parallel
    jobs are separate processes), restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_optimizer(
    name: str, params: Iterator[nn.Parameter] | list[nn.Parameter], lr: float, momentum: float
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
    """
    last = loop.steps - 1
    diverged_at: int | None = None

    def schedule(step: int) -> bool:
        # After a divergence, the next step is recorded: the run's post-mortem.
        return (
            diverged_at is not None
            or step % loop.record_every == 0
            or step % loop.eval_every == 0
            or step == last
        )

    if loop.omega > 0:
        from ...remedies.regularizer import pascanu_omega

        if not hasattr(model, "forward_unrolled"):
            raise ValueError("Ω needs a model with forward_unrolled (RecurrentModel).")

    # Time profiles (||dL/dh_t||, Jacobian decay) at the evaluation steps.
    probe = Probe(
        model,
        every=schedule,
        db=ctx.db,
        name=ctx.name,
        config=ctx.stored_config,
        time_every=lambda step: step % loop.eval_every == 0 or step == last,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    metrics: dict[str, float] = {}
    tail: list[float] = []
    max_norm = 0.0
    reported = 0.0
    health = ""
    value = math.nan
    with probe:
        for step in range(loop.steps + 1):
            post_mortem = diverged_at is not None
            if step == loop.steps and not post_mortem:
                break
            x, y = batch(step)
            if loop.omega > 0:
                out, unrolled = model.forward_unrolled(x)  # type: ignore[operator]
                task_loss = loss_fn(out, y)
                loss = task_loss + loop.omega * pascanu_omega(task_loss, unrolled)
            else:
                task_loss = loss = loss_fn(model(x), y)
            loss.backward()
            value = float(task_loss.detach())
            if diverged_at is None and not math.isfinite(value):
                diverged_at = step  # no update with it; the next step is the post-mortem
            if step % loop.eval_every == 0 or step == last or post_mortem:
                model.eval()
                with torch.no_grad():
                    evaluated = evaluate()
                model.train()
                metrics.update(evaluated)  # metrics only measured once (at init) stay
                for name, metric in evaluated.items():
                    probe.record_scalar(name, metric)
            if post_mortem:
                probe.record_scalar("diverged", 1.0)
            # The global norm before clipping (clip_grad_norm_ records it as clip/pre_norm).
            if loop.clip > 0:
                norm = float(clip_grad_norm_(params, loop.clip, probe=probe).pre_norm)
            else:
                norm = float(global_grad_norm(params))
            max_norm = max(max_norm, norm) if math.isfinite(norm) else math.inf
            probe.record_scalar("max_grad_norm", max_norm)
            recorded = probe.step(task_loss)
            if post_mortem:
                break
            if recorded:
                health = _health(probe)
            if diverged_at is None:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= loop.steps - max(1, loop.steps // 10):
                tail.append(value)
            now = time.monotonic()
            if now - reported > _REPORT_EVERY_S or step == last:
                ctx.report(step + 1, loop.steps, value, health)
                reported = now
        ratio = verdict(probe).ratio
    ctx.report(loop.steps, loop.steps, value, health)
    return {
        **metrics,
        "train_loss": sum(tail) / len(tail) if tail else math.nan,
        "grad_ratio": math.nan if ratio is None else ratio,
        "diverged": float(diverged_at is not None),
        "max_grad_norm": max_norm,
    }
