"""``backprobe demo``: the seeds' story, replayed on real networks with the probe attached.

Chapter 1, "the short network vs the long network", trains three multilayer perceptrons
side by side on the same synthetic task with plain SGD (the seeds' gradient descent,
``w ← w - α·∂J/∂w``):

- a short network: 3 hidden sigmoid layers, PyTorch's default init;
- a long network: 50 hidden sigmoid layers, same init, same learning rate;
- the seeds' cure: 50 hidden ReLU layers with He init.

It then prints, for each, how much gradient reaches every layer, the verdict, the test
accuracy and how far the first layer's weights moved: the chain rule multiplies one
sigmoid derivative (at most 1/4) per layer, so the long sigmoid network's first layers
get ~nothing and learn nothing. Every run is stored in the run database.

Chapter 2, "the short memory of RNNs", lives in :mod:`backprobe.lab.chapter_memory`;
chapter 3, a transformer that spikes (post-LN against pre-LN, and the guard), in
:mod:`backprobe.lab.chapter_spikes`.

Chapters are plain functions in :data:`CHAPTERS`; later chapters append to it and reuse
:func:`train_side_by_side`, :func:`print_profile` and :func:`comparison_table`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .._format import compact_number
from ..diagnose.verdict import Verdict, format_ratio, verdict
from ..probe import Probe
from ..report.text import log_bar, verdict_text
from ..store import DEFAULT_DB, open_run
from .chapter import Chapter, ChapterResult, DemoContext
from .chapter_memory import MEMORY_TITLE, chapter_short_memory
from .chapter_spikes import SPIKES_TITLE, chapter_spikes
from .models import DeepMLP, Init, MLPActivation
from .tasks import Task, classification_task
from .training import Trainee, lab_threads, train_lockstep

__all__ = [
    "CHAPTERS",
    "Chapter",
    "ChapterResult",
    "DemoContext",
    "ModelResult",
    "ModelSpec",
    "TrainingSetup",
    "chapter_short_vs_long",
    "run_demo",
    "train_side_by_side",
]

# -- building blocks shared by the chapters ------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One network of a chapter. ``key`` names its run (``demo/ch1/<key>``)."""

    key: str
    label: str  # short human name for tables, ≤ 14 characters
    depth: int  # hidden layers
    activation: MLPActivation
    init: Init
    lr: float


@dataclass(frozen=True)
class TrainingSetup:
    """Task and training loop shared by the networks of a chapter.

    ``steps`` SGD steps of ``batch`` examples drawn with replacement from the
    ``n_train`` training examples; ``width`` units per hidden layer; the probe records
    every ``every``-th step and the last. The task fields go to
    :func:`~backprobe.lab.tasks.classification_task`.
    """

    steps: int
    batch: int
    width: int
    every: int
    n_train: int = 8192
    n_test: int = 2048
    n_features: int = 6
    n_classes: int = 4
    teacher_width: int = 6


@dataclass
class ModelResult:
    """What a chapter measured on one trained network.

    ``profile`` is the parameter-gradient norm of each Linear layer at the last recorded
    step, input → output, [layers]; ``names`` its layer names. ``moved_first`` and
    ``moved_last`` are ``||W_end - W_start|| / ||W_start||`` of the first and last Linear.
    """

    spec: ModelSpec
    run_id: int
    run_name: str
    verdict: Verdict
    accuracy: float
    chance: float
    moved_first: float
    moved_last: float
    final_loss: float
    step: int
    names: list[str] = field(default_factory=list)
    profile: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def ratio(self) -> float:
        """First / last layer gradient norm at the last recorded step (NaN if unknown)."""
        return math.nan if self.verdict.ratio is None else self.verdict.ratio


def _schedule(every: int, steps: int) -> Callable[[int], bool]:
    """Record steps 0, every, 2·every, … and the last one, which the report shows."""

    def schedule(step: int) -> bool:
        return step % every == 0 or step == steps - 1

    schedule.__name__ = f"every_{every}_and_last"
    return schedule


def _stored_config(
    ctx: DemoContext, chapter: int, spec: ModelSpec, setup: TrainingSetup
) -> dict[str, Any]:
    """What the probe stores with a network's run: the demo, the network, its training."""
    return {
        "demo": {"chapter": chapter, "seed": ctx.seed, "quick": ctx.quick},
        "network": {
            "depth": spec.depth,
            "width": setup.width,
            "activation": spec.activation,
            "init": spec.init,
        },
        "optimizer": {"name": "SGD", "lr": spec.lr, "momentum": 0.0},
        "training": {"steps": setup.steps, "batch": setup.batch},
        "task": {
            "n_train": setup.n_train,
            "n_test": setup.n_test,
            "n_features": setup.n_features,
            "n_classes": setup.n_classes,
            "teacher_width": setup.teacher_width,
        },
    }


def _relative_change(before: torch.Tensor, after: torch.Tensor) -> float:
    """``||after - before|| / ||before||``: how far a weight matrix moved in training."""
    return float((after - before).norm() / before.norm())


def train_side_by_side(
    ctx: DemoContext,
    chapter: int,
    specs: Sequence[ModelSpec],
    setup: TrainingSetup,
    task: Task,
) -> list[ModelResult]:
    """Train the ``specs`` networks interleaved, step by step, on the same mini-batches.

    One rich progress bar per network shows its step and live loss. Each network gets
    its own Probe (run ``demo/ch<chapter>/<key>`` in ``ctx.db``) and plain SGD, no
    momentum: the seeds' gradient descent, whose step is the raw gradient times the
    learning rate, so a vanished gradient shows up as weights that do not move (an
    adaptive optimizer such as Adam would rescale it and hide the problem).
    """
    models: list[DeepMLP] = []
    # Weights from their own RNG stream (the caller's global RNG is left untouched),
    # and each network the same draw whatever the other networks of the chapter are.
    for i, spec in enumerate(specs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed * 1000 + i)
            models.append(
                DeepMLP(
                    task.n_features,
                    setup.width,
                    spec.depth,
                    task.n_classes,
                    spec.activation,
                    spec.init,
                )
            )
    start = [
        (m.linears[0].weight.detach().clone(), m.linears[-1].weight.detach().clone())
        for m in models
    ]
    trainees = [
        Trainee(
            model,
            torch.optim.SGD(model.parameters(), lr=spec.lr, foreach=True),
            Probe(
                model,
                every=_schedule(setup.every, setup.steps),
                db=ctx.db,
                name=f"demo/ch{chapter}/{spec.key}",
                config=_stored_config(ctx, chapter, spec, setup),
            ),
        )
        for model, spec in zip(models, specs, strict=True)
    ]
    # Every network sees the same sequence of mini-batches: [steps, batch] indices.
    g = torch.Generator().manual_seed(ctx.seed)
    batches = torch.randint(0, len(task.y_train), (setup.steps, setup.batch), generator=g)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = batches[min(step, setup.steps - 1)]  # a post-mortem after the last step
        return task.x_train[rows], task.y_train[rows]

    progress = Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:>6}"),
        TimeElapsedColumn(),
        console=ctx.console,
    )
    bars = {
        t: progress.add_task(s.label, total=setup.steps, loss="")
        for t, s in zip(trainees, specs, strict=True)
    }

    def show(step: int, trainee: Trainee, recorded: bool) -> None:
        if step % 10 == 0 or step == setup.steps - 1:
            progress.update(bars[trainee], completed=step + 1, loss=f"{trainee.loss_value:.3f}")

    with progress:
        train_lockstep(trainees, setup.steps, batch, after_update=show)
    results = []
    for spec, model, trainee, (w_first, w_last) in zip(specs, models, trainees, start, strict=True):
        probe = trainee.probe
        with torch.no_grad():
            accuracy = float((model(task.x_test).argmax(1) == task.y_test).float().mean())
        assert probe.run_id is not None
        stored = open_run(ctx.db, probe.run_id)
        params = [layer.index for layer in stored.layer_info if layer.n_params > 0]
        results.append(
            ModelResult(
                spec=spec,
                run_id=probe.run_id,
                run_name=stored.name,
                verdict=verdict(stored),
                accuracy=accuracy,
                chance=task.chance,
                moved_first=_relative_change(w_first, model.linears[0].weight.detach()),
                moved_last=_relative_change(w_last, model.linears[-1].weight.detach()),
                final_loss=trainee.loss_value,
                step=int(stored.steps[-1]),
                names=[stored.layers[i] for i in params],
                profile=stored.history("grad_norm")[-1, params],
            )
        )
    return results


# -- printing --------------------------------------------------------------------------------

#: Most characters a profile bar may take; the demo's output fits 80 columns.
PROFILE_BAR = 48
#: Smallest positive float32 (subnormal): a gradient below it is stored as exactly 0.
FLOAT32_TINY = 1.4e-45

_ACTIVATION_NAMES = {"sigmoid": "sigmoid", "tanh": "tanh", "relu": "ReLU"}
_INIT_NAMES = {
    "default": "PyTorch default",
    "xavier": "Xavier",
    "he": "He",
    "orthogonal": "orthogonal",
}


def _sparse_rows(n: int, every: int = 5) -> list[int]:
    """Rows to show of an ``n``-row profile: all when short, else the first, every
    ``every``-th and the last (``fc1, fc5, fc10, …, fc50, out`` for 51 layers)."""
    if n <= 12:
        return list(range(n))
    return sorted({0, n - 1, *range(every - 1, n, every)})


def _fmt_norm(value: float) -> str:
    """Norms in at most 7 characters: ``0.0753``, ``2.0e-18``, ``0``."""
    return "" if math.isnan(value) else compact_number(value)


def _pct(value: float) -> str:
    """Relative changes, short and never rounded to a false 0: ``0%`` only when exact."""
    if value == 0:
        return "0%"
    if value >= 0.1:
        return f"{value:.0%}"
    if value >= 1e-4:
        return f"{100 * value:.2g}%"
    return f"{_fmt_norm(100 * value)}%"


def profile_scale(results: Sequence[ModelResult]) -> tuple[float, float]:
    """(top, decades) shared by the profiles of a chapter. Bars show each layer's gradient
    relative to its own network's output layer, on one scale for all networks, so that
    they compare at a glance."""
    ratios = [r.profile / r.profile[-1] for r in results if r.profile.size and r.profile[-1] > 0]
    values = np.concatenate(ratios) if ratios else np.zeros(0)
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return 1.0, 2.0
    top = float(positive.max())
    return top, max(2.0, math.ceil(math.log10(top / float(positive.min()))))


def print_profile(console: Console, result: ModelResult, top: float, decades: float) -> None:
    """One network's report: a log-scale bar per Linear layer (every 5th of a deep one),
    the verdict, test accuracy and how far the first and last weights moved."""
    rows = _sparse_rows(len(result.names))
    shown = "" if len(rows) == len(result.names) else ", every 5th shown"
    console.print(
        Text.assemble(
            (result.spec.label, "bold"),
            f"  run {result.run_id}: gradient norm per layer at step {result.step}{shown}",
        )
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1))
    table.add_column("layer", no_wrap=True, min_width=5)
    table.add_column("grad", justify="right", no_wrap=True, min_width=7)
    table.add_column("vs out", justify="right", no_wrap=True, min_width=6)
    table.add_column(
        f"log scale, {decades:.0f} decades", no_wrap=True, overflow="crop", max_width=PROFILE_BAR
    )
    last = float(result.profile[-1])
    for i in rows:
        value = float(result.profile[i])
        relative = value / last if last > 0 else math.nan
        table.add_row(
            result.names[i],
            _fmt_norm(value),
            format_ratio(relative).replace(" (underflow)", "") if math.isfinite(relative) else "",
            Text(log_bar(relative, top, decades, PROFILE_BAR), style="cyan"),
        )
    console.print(table)
    console.print(verdict_text(result.verdict))
    console.print(
        f"test accuracy {result.accuracy:.0%} (chance {result.chance:.0%}); weights moved: "
        f"first layer {_pct(result.moved_first)}, last {_pct(result.moved_last)}"
    )
    console.print()


def comparison_table(results: Sequence[ModelResult], title: str) -> Table:
    """One row per network: depth, learning rate, first/last gradient ratio, verdict,
    how far the first layer's weights moved, test accuracy. Fits 80 columns."""
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
    )
    for header in ("network", "depth", "lr", "first/last", "verdict", "fc1 moved", "acc"):
        table.add_column(header, justify="left" if header == "network" else "right", no_wrap=True)
    for r in results:
        style = {"healthy": "green", "vanishing": "yellow"}.get(r.verdict.status, "red")
        table.add_row(
            r.spec.label,
            str(r.spec.depth),
            f"{r.spec.lr:g}",
            format_ratio(r.ratio) if math.isfinite(r.ratio) else "?",
            Text(r.verdict.status, style=style),
            _pct(r.moved_first),
            f"{r.accuracy:.0%}",
        )
    return table


def per_layer_factor(result: ModelResult) -> float:
    """The geometric mean factor by which the gradient shrinks per hidden layer on its
    way back, from the last hidden layer to the earliest one whose gradient is not 0."""
    hidden = result.profile[:-1]
    nonzero = np.flatnonzero(np.isfinite(hidden) & (hidden > 0))
    if nonzero.size < 2:
        return math.nan
    first, last = int(nonzero[0]), int(nonzero[-1])
    return float((hidden[first] / hidden[last]) ** (1.0 / (last - first)))


def extrapolated_ratio(result: ModelResult, factor: float) -> float:
    """First / last layer gradient norm implied by ``factor`` per hidden layer, starting
    from the last hidden layer's measured gradient (for gradients recorded as 0)."""
    hidden = result.profile[:-1]
    return float(hidden[-1] / result.profile[-1] * factor ** (hidden.size - 1))


# -- chapter 1 ----------------------------------------------------------------------------

# Why these values (measured on a 2-core CPU, seeds 0-2; see tests/lab/test_demo.py):
# - Task: 8 features, 4 balanced classes from a tanh teacher of width 8, 2048 training
#   examples: a 3-layer network reaches ~90% test accuracy; chance is 25%.
# - Width 64: at width 32 a 50-layer ReLU network's forward signal fluctuates too much
#   from layer to layer (its spread grows like depth / width) and plain SGD trains it
#   erratically; width 64 trains reliably and still costs ~4 ms per step.
# - Learning rates: sigmoid networks tolerate a large step (each layer's derivative is at
#   most 1/4, so updates shrink on their way down), and the short network needs it to
#   leave its initial plateau within the budget; both sigmoid networks get the same lr so
#   that depth is the only difference between them. The 50-layer ReLU + He network
#   passes gradients of order 1 to all 51 layers, whose updates compound: it diverges at
#   lr ≥ 0.05 and trains steadily at 0.01 (no gradient clipping: that is a later
#   chapter's remedy).
CH1_FULL = TrainingSetup(steps=1000, batch=128, width=64, every=25)
CH1_QUICK = TrainingSetup(steps=250, batch=128, width=64, every=25)
SIGMOID_LR = 2.0
RELU_LR = 0.01
CH1_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec("short-sigmoid", "short sigmoid", 3, "sigmoid", "default", SIGMOID_LR),
    ModelSpec("deep-sigmoid", "deep sigmoid", 50, "sigmoid", "default", SIGMOID_LR),
    ModelSpec("deep-relu-he", "deep ReLU + He", 50, "relu", "he", RELU_LR),
)


def chapter_short_vs_long(ctx: DemoContext) -> ChapterResult[ModelResult]:
    """Chapter 1: the seeds' short vs long network, and ReLU + He init as the cure."""
    console = ctx.console
    setup = CH1_QUICK if ctx.quick else CH1_FULL
    task = classification_task(
        n_train=setup.n_train,
        n_test=setup.n_test,
        n_features=setup.n_features,
        n_classes=setup.n_classes,
        seed=ctx.seed,
        teacher_width=setup.teacher_width,
    )
    console.print(
        f"Three networks learn the same task ({task.n_classes} classes, {task.n_features} "
        f"features, {setup.n_train} examples) side by side with plain SGD: "
        f"{setup.steps} steps of {setup.batch} examples, {setup.width} units per layer."
    )
    for spec in CH1_SPECS:
        console.print(
            f"  {spec.label:<15}{spec.depth:>2} hidden {_ACTIVATION_NAMES[spec.activation]} "
            f"layers, {_INIT_NAMES[spec.init]} init, lr {spec.lr:g}"
        )
    console.print()
    results = train_side_by_side(ctx, 1, CH1_SPECS, setup, task)
    console.print()
    top, decades = profile_scale(results)
    console.print(
        Text(
            "Bars: each layer's gradient norm relative to its network's output layer, on a "
            "log scale shared by the three networks; · marks a norm recorded as 0.",
            style="dim",
        )
    )
    console.print()
    for result in results:
        print_profile(console, result, top, decades)
    console.print(comparison_table(results, "Chapter 1 in one table"))
    console.print()
    short, deep, relu = results
    _tell_story(ctx, short, deep, relu)
    return ChapterResult(1, "the short network vs the long network", results)


def _tell_story(ctx: DemoContext, short: ModelResult, deep: ModelResult, relu: ModelResult) -> None:
    """The chapter's conclusion in plain sentences, built from what was measured, so that
    it stays true for any seed: the wording follows the outcome."""
    console = ctx.console
    factor = per_layer_factor(deep)
    if math.isfinite(factor):
        passed = f"about {factor:.2g} of the gradient it received"
    else:
        passed = "a fraction of the gradient it received"
    if deep.ratio == 0 and math.isfinite(factor):
        # Recorded as 0: extrapolate the measured per-layer factor down to the first layer.
        estimate = extrapolated_ratio(deep, factor)
        reached = (
            f"about {format_ratio(estimate)} of the last layer's gradient, below what "
            f"float32 resolves: recorded as 0"
        )
    else:
        reached = f"{format_ratio(deep.ratio)} of the last layer's gradient"
    if deep.accuracy < deep.chance + 0.1:
        outcome = f"it scored {deep.accuracy:.0%}: chance"
    else:
        outcome = f"it scored {deep.accuracy:.0%}, above chance ({deep.chance:.0%}) all the same"
    console.print(
        f"In the {deep.spec.depth}-layer sigmoid network each layer passed {passed} down "
        f"to the layer below (the chain rule's d1·d2·…; a sigmoid's slope is at most 1/4), "
        f"so its first layer got {reached}. Its first-layer weights moved "
        f"{_pct(deep.moved_first)} and {outcome}."
    )
    console.print()

    def learned(r: ModelResult) -> bool:
        return r.accuracy >= r.chance + 0.25

    first = (
        f"The same sigmoid layers only {short.spec.depth} deep learned the task "
        f"({short.accuracy:.0%})"
        if learned(short)
        else f"The same sigmoid layers only {short.spec.depth} deep reached {short.accuracy:.0%}"
    )
    second = (
        f"and so did {relu.spec.depth} ReLU layers with He init ({relu.accuracy:.0%})"
        if learned(relu) == learned(short)
        else f"while {relu.spec.depth} ReLU layers with He init reached {relu.accuracy:.0%}"
    )
    console.print(
        f"{first}, {second}: ReLU's slope is 0 or 1 and He init keeps the signal's size "
        f"from layer to layer, so their first layer got {format_ratio(relu.ratio)} times "
        f"the last layer's gradient."
    )
    console.print()
    ids = ", ".join(str(r.run_id) for r in (short, deep, relu))
    db = "" if ctx.db == DEFAULT_DB else f" --db {ctx.db}"
    console.print(
        f"The three runs are stored (ids {ids}). `backprobe show {deep.run_id}{db}` shows "
        f"the long sigmoid network layer by layer; `backprobe runs{db}` lists them all."
    )


CHAPTERS: list[Chapter] = [
    Chapter(1, "the short network vs the long network", chapter_short_vs_long),
    Chapter(2, MEMORY_TITLE, chapter_short_memory),
    Chapter(3, SPIKES_TITLE, chapter_spikes),
]


def run_demo(
    db: Path,
    quick: bool = False,
    seed: int = 0,
    console: Console | None = None,
    chapters: Sequence[int] | None = None,
) -> list[ChapterResult[Any]]:
    """Run the demo's chapters (default: all) in order; return what each measured.

    Args:
        db: run database every chapter's runs are stored in.
        quick: fewer steps (seconds, for CI); the story keeps its direction.
        seed: seeds the task, the weights and the mini-batches.
        console: where to print (default: a new rich Console).
        chapters: numbers of the chapters to run (default: all).
    """
    console = console or Console()
    ctx = DemoContext(db=Path(db), quick=quick, seed=seed, console=console)
    results = []
    with lab_threads():
        for chapter in CHAPTERS:
            if chapters is not None and chapter.number not in chapters:
                continue
            console.rule(f"[bold]Chapter {chapter.number}: {chapter.title}", align="left")
            started = time.perf_counter()
            results.append(chapter.run(ctx))
            console.print(
                Text(f"chapter {chapter.number} took {time.perf_counter() - started:.0f} s", "dim")
            )
    return results
