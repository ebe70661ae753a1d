"""``backprobe demo``, chapter 3: a transformer that spikes, post-LN against pre-LN.

Xiong et al. (2020) show that where LayerNorm sits decides how a transformer's gradient
is spread over its depth. In the original post-LN transformer (``x = LN(x + f(x))``) the
parameter gradients at initialisation grow toward the output layers, so that the
learning rate which suits the lower blocks is too large for the upper ones: post-LN
needs a learning-rate warm-up, and diverges when the rate rises too fast. Pre-LN
(``x = x + f(LN(x))``) keeps an identity path from the loss to every block; its
gradients do not grow toward the output, and it trains at the same rate without the
trouble.

The chapter trains three small causal transformers (8 blocks, width 64) on the same
stream of Markov-chain text (:func:`~backprobe.lab.tasks.markov_text`), with one recipe:
Adam, the learning rate raised linearly to 0.02 over the first 100 steps, then held.
The post-LN model learns until the rate nears its peak, then its gradient norm spikes
and the model collapses to predicting token frequencies; the probe's sentinel (every
step, whatever the schedule) names the step, the layers whose gradients rose most
against their own baseline, and the samples that carry the spike. The pre-LN model
trains through it. The third model is the post-LN one again under
:class:`~backprobe.remedies.guard.Guard` (``on_spike="scale_lr"``): at the spike it
lowers the learning rate for a while, and the model keeps learning. Skipping the step
would not help here: the batch is not at fault, the learning rate is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from rich import box
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from torch import nn

from .._format import compact_number
from ..diagnose.finding import Finding
from ..diagnose.rules import diagnose
from ..probe import Probe
from ..remedies.guard import Guard
from ..store import open_run
from .chapter import ChapterResult, DemoContext
from .models import TransformerLM
from .tasks import markov_text
from .training import Trainee, train_lockstep

#: The chapter's title in ``backprobe demo``.
SPIKES_TITLE = "a transformer that spikes: post-LN against pre-LN"


@dataclass(frozen=True)
class SpikeSetup:
    """The chapter's sizes: ``steps`` Adam steps of ``batch`` sequences of ``length``
    tokens; the learning rate rises linearly to ``peak_lr`` over ``warmup`` steps; the
    probe records every ``every``-th step (its sentinel sees every step)."""

    steps: int
    warmup: int
    peak_lr: float = 0.02
    layers: int = 8
    width: int = 64
    heads: int = 4
    length: int = 32
    batch: int = 32
    vocab: int = 32
    every: int = 20

    def lr(self, step: int) -> float:
        """The learning rate of ``step``: linear warm-up, then constant."""
        return self.peak_lr * min(1.0, (step + 1) / self.warmup)


SPIKES_FULL = SpikeSetup(steps=200, warmup=100)
SPIKES_QUICK = SpikeSetup(steps=150, warmup=75, layers=6, width=48, length=24, batch=16)


@dataclass(frozen=True)
class TransformerSpec:
    """One model of the chapter; ``key`` names its run (``demo/ch3/<key>``)."""

    key: str
    label: str
    pre_ln: bool
    guarded: bool


SPECS = (
    TransformerSpec("post-ln", "post-LN", pre_ln=False, guarded=False),
    TransformerSpec("pre-ln", "pre-LN", pre_ln=True, guarded=False),
    TransformerSpec("post-ln-guard", "post-LN + guard", pre_ln=False, guarded=True),
)


@dataclass
class SpikeResult:
    """What the chapter measured on one model.

    ``block_grads`` is each block's feed-forward output layer's gradient norm at step 0,
    input → output [layers] (the probe's first recorded step); ``final_loss`` the mean
    loss of the last tenth of the steps; ``spikes`` the run's spike findings, by step; ``actions``
    the guard's actions as (step, action).
    """

    spec: TransformerSpec
    run_id: int
    run_name: str
    final_loss: float
    best_loss: float
    block_grads: np.ndarray
    spikes: list[Finding] = field(default_factory=list)
    actions: list[tuple[int, str]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def rise(self) -> float:
        """How much the gradient grows from its smallest block to the last one, at
        initialisation (1: the last block gets the smallest gradient)."""
        return float(self.block_grads[-1] / self.block_grads.min())


def _token_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy over every position: logits [B, T, V], targets [B, T]."""
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return loss, loss


def _block_layers(probe: Probe, layers: int) -> list[int]:
    """Rows of each block's feed-forward output layer (``linear2``), input → output."""
    return [probe.layers.index(f"blocks.layers.{i}.linear2") for i in range(layers)]


def _trainee(ctx: DemoContext, spec: TransformerSpec, setup: SpikeSetup) -> Trainee:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)  # the same initial weights for every post-LN model
        model = TransformerLM(
            setup.vocab,
            setup.length,
            width=setup.width,
            heads=setup.heads,
            layers=setup.layers,
            pre_ln=spec.pre_ln,
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=setup.lr(0))
    probe = Probe(
        model,
        every=lambda step: step % setup.every == 0 or step == setup.steps - 1,
        db=ctx.db,
        name=f"demo/ch3/{spec.key}",
        config={
            "demo": {"chapter": 3, "seed": ctx.seed, "quick": ctx.quick},
            "task": {"name": "markov_text", "vocab": setup.vocab, "length": setup.length},
            "model": {
                "pre_ln": spec.pre_ln,
                "layers": setup.layers,
                "width": setup.width,
                "heads": setup.heads,
            },
            "optimizer": {
                "name": "Adam",
                "peak_lr": setup.peak_lr,
                "warmup": setup.warmup,
                "batch": setup.batch,
            },
            "guard": "scale_lr" if spec.guarded else None,
        },
    )
    guard = Guard(probe, optimizer, on_spike="scale_lr") if spec.guarded else None
    return Trainee(model, optimizer, probe, loss=_token_loss, guard=guard)


def train_transformers(ctx: DemoContext, setup: SpikeSetup) -> list[SpikeResult]:
    """Train the chapter's three models in lockstep on the same batches; return what
    each measured (runs ``demo/ch3/<key>`` in ``ctx.db``)."""
    trainees = [_trainee(ctx, spec, setup) for spec in SPECS]
    losses: dict[str, list[float]] = {spec.key: [] for spec in SPECS}
    stream = markov_text(setup.steps * setup.batch, setup.length, vocab=setup.vocab, seed=ctx.seed)
    progress = Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(bar_width=24),
        TextColumn("loss {task.fields[loss]:>5}"),
        TimeElapsedColumn(),
        console=ctx.console,
    )
    bars = {spec.key: progress.add_task(spec.label, total=setup.steps, loss="") for spec in SPECS}
    keys = {id(t): spec.key for t, spec in zip(trainees, SPECS, strict=True)}

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = stream[step * setup.batch : (step + 1) * setup.batch]
        return tokens[:, :-1], tokens[:, 1:]

    def warm_up(step: int, trainee: Trainee) -> None:
        for group in trainee.optimizer.param_groups:
            group["lr"] = setup.lr(step)

    def after_update(step: int, trainee: Trainee, recorded: bool) -> None:
        key = keys[id(trainee)]
        losses[key].append(trainee.loss_value)
        progress.update(bars[key], completed=step + 1, loss=f"{trainee.loss_value:.2f}")

    with progress:
        train_lockstep(
            trainees, setup.steps, batch, before_probe_step=warm_up, after_update=after_update
        )
    results = []
    tail = max(1, setup.steps // 10)
    for spec, trainee in zip(SPECS, trainees, strict=True):
        run_id = trainee.probe.run_id
        assert run_id is not None
        run = open_run(ctx.db, run_id)
        grads = run.history("grad_norm")[0, _block_layers(trainee.probe, setup.layers)]
        curve = np.asarray(losses[spec.key])
        results.append(
            SpikeResult(
                spec=spec,
                run_id=run_id,
                run_name=f"demo/ch3/{spec.key}",
                final_loss=float(curve[-tail:].mean()),
                best_loss=float(np.nanmin(curve)),
                block_grads=grads,
                spikes=sorted(
                    (
                        f
                        for f in diagnose(run, lr=setup.peak_lr, optimizer="adam")
                        if f.kind == "spike"
                    ),
                    key=lambda f: f.where["step"],
                ),
                actions=[(e.step, e.kind) for e in run.events],
            )
        )
    return results


def _bars(values: np.ndarray, top: float, width: int = 20) -> list[str]:
    """A linear bar per value, the longest ``top`` filling ``width`` characters."""
    return ["█" * max(1, round(width * float(v) / top)) for v in values]


def block_table(results: list[SpikeResult]) -> Table:
    """Each block's gradient norm at initialisation, side by side for post-LN and
    pre-LN (their feed-forward output layers, input → output)."""
    shown = [r for r in results if not r.spec.guarded]
    top = max(float(r.block_grads.max()) for r in shown)
    table = Table(
        title="gradient norm per block at initialisation (feed-forward output layer)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("block")
    for r in shown:
        table.add_column(r.spec.label)
        table.add_column("", justify="right")
    bars = [_bars(r.block_grads, top) for r in shown]
    for i in range(len(shown[0].block_grads)):
        row = [str(i)]
        for r, bar in zip(shown, bars, strict=True):
            row += [bar[i], compact_number(float(r.block_grads[i]))]
        table.add_row(*row)
    return table


def outcome_table(results: list[SpikeResult]) -> Table:
    """Best and final loss, spikes found and the guard's actions, per model."""
    table = Table(
        title="Chapter 3 in one table (loss in nats; token frequencies alone give about 3.1)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for name, justify in (("model", "left"), ("best loss", "right"), ("final loss", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("spikes (first step)", justify="right")
    table.add_column("guard actions", justify="right")
    for r in results:
        first = f"{len(r.spikes)} ({r.spikes[0].where['step']})" if r.spikes else "0"
        table.add_row(
            r.spec.label,
            f"{r.best_loss:.2f}",
            f"{r.final_loss:.2f}",
            first,
            str(len(r.actions)) if r.spec.guarded else "–",
        )
    return table


def _named(items: list) -> str:
    return ", ".join(str(i) for i in items[:3]) + (" …" if len(items) > 3 else "")


def _tell_story(ctx: DemoContext, setup: SpikeSetup, results: list[SpikeResult]) -> None:
    """The conclusion in sentences built from the measurements."""
    console = ctx.console
    post, pre, guarded = (next(r for r in results if r.key == s.key) for s in SPECS)
    console.print(
        f"At initialisation the last block's gradient is {compact_number(post.block_grads[-1])}"
        f" in post-LN against {compact_number(pre.block_grads[-1])} in pre-LN: post-LN's "
        f"gradients grow toward the output ({post.rise:.2f}× from their smallest block to "
        f"the last), pre-LN's do not ({pre.rise:.2f}×), so a learning rate that suits "
        "post-LN's lower blocks is too large for its upper ones."
    )
    collapsed = post.final_loss > post.best_loss + 0.5
    if post.spikes:
        spike = post.spikes[0]
        samples = spike.where.get("samples") or []
        who = (
            f"samples {_named(samples)} of the batch carry it"
            if samples
            else "no sample of the batch stands out: the batch is ordinary, the learning "
            "rate is not"
        )
        console.print(
            f"Post-LN spiked at step {spike.where['step']} (learning rate "
            f"{setup.lr(spike.where['step']):.3g}), most in {_named(spike.where['layers'])}; "
            f"{who}. "
            + (
                f"It then collapsed: loss {post.best_loss:.2f} at best, {post.final_loss:.2f}"
                " at the end, what token frequencies alone give."
                if collapsed
                else f"Its loss ended at {post.final_loss:.2f}."
            )
        )
    else:
        console.print(f"Post-LN raised no spike finding; its loss ended at {post.final_loss:.2f}.")
    console.print(
        f"Pre-LN trained through the same schedule (final loss {pre.final_loss:.2f}). The guard "
        f"on post-LN lowered the learning rate at steps "
        f"{_named([step for step, _ in guarded.actions]) or 'none'} and its model ended at "
        f"{guarded.final_loss:.2f}: the cure for a spike of this kind is a lower rate "
        "(or a longer warm-up, or pre-LN), not skipping the batch."
    )
    console.print(
        Text(
            f"See the spike step by step: backprobe show {post.run_name} --db {ctx.db}",
            style="dim",
        )
    )


def chapter_spikes(ctx: DemoContext) -> ChapterResult[SpikeResult]:
    """Chapter 3: post-LN against pre-LN under one warm-up schedule, and the guard."""
    console = ctx.console
    setup = SPIKES_QUICK if ctx.quick else SPIKES_FULL
    console.print(
        f"Three causal transformers ({setup.layers} blocks, width {setup.width}) learn the "
        f"same Markov-chain text ({setup.vocab} tokens, {setup.length} per sequence) with "
        f"Adam: the learning rate rises to {setup.peak_lr:g} over {setup.warmup} steps, "
        f"then holds, {setup.steps} steps of {setup.batch} sequences. The probe's sentinel "
        "watches every step for spikes; the third model is post-LN under "
        'bp.Guard(probe, optimizer, on_spike="scale_lr").'
    )
    console.print()
    results = train_transformers(ctx, setup)
    console.print()
    console.print(block_table(results))
    console.print(outcome_table(results))
    console.print()
    _tell_story(ctx, setup, results)
    return ChapterResult(3, SPIKES_TITLE, results)
