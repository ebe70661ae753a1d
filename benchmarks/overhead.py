"""Overhead of the probe against plain training, per workload, in one process run.

Workloads (``--workload``, default all four):

- ``mlp``: a 16-layer 512-wide tanh MLP, batch 256, SGD;
- ``lstm``: the word-language model of pytorch/examples (embedding, a 2-layer LSTM of
  200 units, a linear decoder over 10 000 words; T = 35, batch 20; no dropout, which time
  profiles cannot replay), the probe measuring time profiles (||dL/dh_t||, the Jacobian
  decay) on a sub-batch of 8 at each recorded step;
- ``gpt2``: a 4-layer GPT-2 built from a Hugging Face ``GPT2Config`` (width 128, 4 heads,
  vocabulary 4096, 64 tokens, batch 8; no download), eager;
- ``gpt2-compiled``: the same under ``torch.compile`` (inductor), the probe attached to
  the compiled model.

Variants of each workload: ``plain`` training; the ``read floor`` (:class:`ReadFloor`:
every tensor a recorded step must see read once, nothing computed; for the compiled
workload run eagerly, as a recorded step of a compiled model is); ``backprobe`` (the
default probe, its overhead budget of 2 %); ``backprobe every step`` (``every=1``);
``backprobe sentinel only`` (a schedule that records no step: what every step pays for
the sentinel, the loss, gradient norms and output-gradient samples kept at each step);
and
for the MLP, peers when installed (``pip install -e ".[bench]"``): Lightning's
``grad_norm`` and TensorBoard's ``add_histogram`` for every parameter's gradient.

Variants run interleaved in rounds, so that drifts of the machine hit all of them alike:
each round times ``--steps`` training steps of every variant, in a shuffled order,
between two runs of plain training (two copies, so that every model takes the same
steps), and a variant's ratio in that round is its mean step time, recorded steps
included, against the mean of those two. Before the rounds every variant trains
``--warmup`` steps (allocator, compilation, the budget's first 10 recorded steps). The
table gives the median time per step, the median and interquartile range of the
per-round ratios, the ratio of the total times over all rounds (what a budget's
recordings, rarer than one per round, cost on the whole), the share of steps recorded,
and the overheads the probe measured with its own clock: recording's (none when every
step is recorded: it has no unrecorded step to compare with) and the sentinel's.

Peak memory (MLP only) is measured per variant in a fresh subprocess: the process's peak
resident memory over the timed steps, with the kernel's high-water mark reset after a
warm-up (Linux), so that imports and set-up do not count.

    python benchmarks/overhead.py                      # all four tables (make bench)
    python benchmarks/overhead.py --workload lstm      # one of them
    python benchmarks/overhead.py --quick              # smoke run, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import backprobe as bp
from backprobe.probe.norms import grouped_norms

WORKLOADS = ("mlp", "lstm", "gpt2", "gpt2-compiled")
PROBES = ("backprobe", "backprobe every step", "backprobe sentinel only")


def never(step: int) -> bool:
    """The schedule of the sentinel-only probe: no step recorded."""
    return False


def make_model(depth: int, width: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers)


class WordLM(nn.Module):
    """The word-language model of pytorch/examples (LSTM): [T, B] tokens → [T, B, vocab]
    logits; encoder and decoder weights U(−0.1, 0.1)."""

    def __init__(self, vocab: int, hidden: int, layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, layers, dropout=dropout)
        self.decoder = nn.Linear(hidden, vocab)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(self.drop(self.encoder(tokens)))
        return self.decoder(self.drop(output))


@dataclass
class Workload:
    """A model, its batch and its loss."""

    title: str
    model: nn.Module
    batch: torch.Tensor
    loss: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    compiled: bool = False


def _square_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).square().mean()


def _next_word_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:-1])
    return nn.functional.cross_entropy(logits.flatten(0, 1), tokens[1:].flatten())


def _hf_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model(input_ids=tokens, labels=tokens).loss


def make_workload(name: str, quick: bool) -> Workload:
    """The model, batch and loss of workload ``name`` (tiny ones with ``quick``)."""
    torch.manual_seed(0)
    if name == "mlp":
        depth, width, batch = (4, 64, 32) if quick else (16, 512, 256)
        return Workload(
            f"{depth}-layer {width}-wide tanh MLP, batch {batch}",
            make_model(depth, width),
            torch.randn(batch, width),
            _square_loss,
        )
    if name == "lstm":
        vocab, hidden, length, batch = (500, 32, 12, 10) if quick else (10_000, 200, 35, 20)
        return Workload(
            f"word-language-model LSTM (2 layers, hidden {hidden}, vocabulary {vocab}), "
            f"T = {length}, batch {batch}, time profiles on a sub-batch of 8",
            WordLM(vocab, hidden),
            torch.randint(0, vocab, (length + 1, batch)),
            _next_word_loss,
        )
    from transformers import GPT2Config, GPT2LMHeadModel

    width, vocab, length, batch = (32, 256, 16, 2) if quick else (128, 4096, 64, 8)
    config = GPT2Config(
        n_layer=4,
        n_embd=width,
        n_head=4,
        n_positions=length,
        vocab_size=vocab,
        bos_token_id=0,
        eos_token_id=0,
    )
    compiled = name == "gpt2-compiled"
    return Workload(
        f"4-layer GPT-2 (width {width}, vocabulary {vocab}), {length} tokens, batch {batch}, "
        + ("torch.compile (inductor)" if compiled else "eager"),
        GPT2LMHeadModel(config),
        torch.randint(0, vocab, (batch, length)),
        _hf_loss,
        compiled,
    )


class ReadFloor:
    """The least work a hook-based probe of the default statistics does on a recorded
    step, with no statistic computed: one sum over each layer's output and over each
    backward signal (the hooks the probe uses), one norm per parameter and per gradient,
    and one host transfer. Every statistic needs each of those tensors read at least once,
    so this row is a floor for any probe built on module and tensor hooks."""

    def __init__(self, model: nn.Module) -> None:
        self.params = list(model.parameters())
        self.sums: list[torch.Tensor] = []
        for module in model.modules():
            if not any(True for _ in module.children()):
                module.register_forward_hook(self._on_forward)

    def _on_forward(self, module: nn.Module, inputs: object, out: object) -> None:
        if torch.is_grad_enabled() and isinstance(out, torch.Tensor) and out.is_floating_point():
            self.sums.append(out.detach().sum().reshape(1))
            if out.requires_grad:
                out.register_hook(lambda grad: self.sums.append(grad.sum().reshape(1)))

    def step(self) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        # the norms taken as the probe takes them (one BLAS dot each on the CPU)
        norms = [n for _, n in grouped_norms([p.detach() for p in self.params] + grads)]
        torch.cat([*self.sums, *norms]).cpu().numpy()
        self.sums = []


class Variant:
    """One way of training a workload: a model copy, its optimizer, and what is done
    after each backward pass."""

    def __init__(self, name: str, workload: Workload, tmp: Path) -> None:
        self.name = name
        self.workload = workload
        model = copy.deepcopy(workload.model)
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-4)
        self.model: nn.Module = torch.compile(model) if workload.compiled else model
        self.probe: bp.Probe | None = None
        self.eager = workload.compiled and name == "read floor"
        self.after_backward = self._setup(tmp)

    def _setup(self, tmp: Path) -> Callable[[torch.Tensor, int], None]:
        if self.name == "plain":
            return lambda loss, step: None
        if self.name in PROBES:
            db = tmp / f"{self.name.replace(' ', '_')}.db"
            every = {"backprobe every step": 1, "backprobe sentinel only": never}.get(self.name)
            self.probe = bp.Probe(self.model, every=every, db=db, name=self.name, time_batch=8)
            probe = self.probe
            return lambda loss, step: probe.step(loss)
        if self.name == "read floor":
            floor = ReadFloor(self.model)
            return lambda loss, step: floor.step()
        if self.name == "lightning grad_norm":
            from lightning.pytorch.utilities import grad_norm

            return lambda loss, step: grad_norm(self.model, norm_type=2)
        if self.name == "tensorboard histograms":
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(tmp / "tb"))
            params = list(self.model.named_parameters())

            def histograms(loss: torch.Tensor, step: int) -> None:
                for name, p in params:
                    writer.add_histogram(name, p.grad, step)

            return histograms
        raise ValueError(f"unknown variant {self.name!r}")

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """This variant's turn. A probe is attached for its turn only: its clock would
        count the other variants' turns as the duration of its next step, and on a
        compiled model it holds the global force_eager stance until its recorded step
        ends, which would run the other variants' compiled graphs eagerly."""
        stance = torch.compiler.set_stance("force_eager") if self.eager else None
        if self.probe is not None:
            self.probe.attach()
        try:
            if stance is None:
                yield
            else:
                with stance:
                    yield
        finally:
            if self.probe is not None:
                self.probe.detach()

    def run(self, steps: int, first_step: int) -> float:
        """Train ``steps`` steps; return the mean seconds per step."""
        loss_of, batch = self.workload.loss, self.workload.batch
        with self._turn():
            start = time.perf_counter()
            for i in range(steps):
                loss = loss_of(self.model, batch)
                loss.backward()
                self.after_backward(loss, first_step + i)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
            return (time.perf_counter() - start) / steps


def available_variants(workload: str) -> list[str]:
    names = ["plain", "read floor", *PROBES]
    if workload != "mlp":
        return names
    try:
        import lightning.pytorch  # noqa: F401

        names.append("lightning grad_norm")
    except ImportError:
        print("(lightning not installed: its row is skipped; `make bench` installs it)")
    try:
        import tensorboard  # noqa: F401

        names.append("tensorboard histograms")
    except ImportError:
        print("(tensorboard not installed: its row is skipped; `make bench` installs it)")
    return names


def peak_memory_mb(variant: str, args: argparse.Namespace) -> float:
    """Peak resident memory (MB) over ``args.steps`` steps of one MLP variant, in a fresh
    process."""
    cmd = [sys.executable, __file__, "--memory-of", variant, "--steps", str(args.steps)]
    cmd += ["--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_mb"])


def _measure_memory(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    workload = make_workload("mlp", args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        variant = Variant(args.memory_of, workload, Path(tmp))
        del workload
        variant.run(2, 0)  # first step: allocator warm-up, probe's layer order, DB file
        _reset_peak_rss()
        variant.run(max(args.steps, 5), 2)
        peak = _status_mb("VmHWM")
    print(json.dumps({"peak_mb": peak}))


def _reset_peak_rss() -> None:
    """Reset the kernel's high-water mark of resident memory (Linux), so that imports
    and set-up do not count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


@dataclass
class Timings:
    """Per-round mean step times of each variant and the paired plain times."""

    times: dict[str, list[float]]
    plain: list[float]


def time_workload(name: str, args: argparse.Namespace, tmp: Path) -> tuple[Timings, dict]:
    """Run the rounds of workload ``name``; return the timings and, per probe variant,
    the share of steps recorded and the overheads the probe measured (recording's, the
    sentinel's)."""
    workload = make_workload(name, args.quick)
    names = available_variants(name)
    variants = {n: Variant(n, workload, tmp) for n in names}
    # Plain training after the variants trains its own copy: each model takes the same
    # steps (a model trained further may run slower, e.g. on subnormal numbers).
    plain_after = Variant("plain", workload, tmp)
    for v in [*variants.values(), plain_after]:  # allocator, compilation, budget warm-up
        v.run(args.warmup, 0)
    timings = Timings({n: [] for n in names}, [])
    order = random.Random(0)
    gc.disable()  # a collection inside one variant's timing would bias it
    try:
        for r in range(args.rounds):
            step = args.warmup + r * args.steps
            before = variants["plain"].run(args.steps, step)
            for n in order.sample(names[1:], len(names) - 1):  # no variant always first
                timings.times[n].append(variants[n].run(args.steps, step))
            after = plain_after.run(args.steps, step)
            timings.plain.append((before + after) / 2)  # paired: the machine in this round
            timings.times["plain"].append((before + after) / 2)
    finally:
        gc.enable()
    probes = {}
    total_steps = args.warmup + args.rounds * args.steps
    for n, v in variants.items():
        if v.probe is not None:
            probes[n] = (
                len(v.probe.steps) / total_steps,
                v.probe.overhead,
                v.probe.sentinel_overhead,
            )
            v.probe.close()
    return timings, probes


def _measured(overhead: float | None, sentinel: float | None) -> str:
    """'1.9 % + 3.1 %': the overheads a probe measured, recording's and the sentinel's
    ('-' for what it did not measure: recording when every step is recorded)."""
    if overhead is None or sentinel is None or sentinel != sentinel:
        return "-"  # no unrecorded step: neither was measured
    cells = ["-" if v != v else f"{100 * v:.1f} %" for v in (overhead, sentinel)]
    return " + ".join(cells)


def print_table(
    title: str,
    timings: Timings,
    probes: dict,
    memory: dict[str, float],
    args: argparse.Namespace,
) -> None:
    print(
        f"\n{title}; {args.threads} threads, torch {torch.__version__}; {args.rounds} rounds "
        f"of {args.steps} steps per variant after {args.warmup} warm-up steps, each round "
        f"between two plain runs\n"
    )
    print(
        "| variant | ms / step | ratio to plain (median, IQR) | all rounds | recorded | "
        "overhead measured (recording + sentinel) | peak memory (MB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    total_plain = sum(timings.plain)
    for name, times in timings.times.items():
        ratios = [t / p for t, p in zip(times, timings.plain, strict=True)]
        q1, median, q3 = statistics.quantiles(ratios, n=4)
        share, overhead, sentinel = probes.get(name, (None, None, None))
        cells = [
            name,
            f"{1e3 * statistics.median(times):.1f}",
            f"{median:.3f}x ({q1:.3f}-{q3:.3f})",
            f"{sum(times) / total_plain:.3f}x",
            "-" if share is None else f"{100 * share:.0f} %",
            _measured(overhead, sentinel),
            "-" if name not in memory else f"{memory[name]:.0f}",
        ]
        print("| " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=(*WORKLOADS, "all"), default="all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=None, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps per variant")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory column")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.warmup = 3, 4, 12
    if args.memory_of:
        args.steps = args.steps or 20
        _measure_memory(args)
        return
    torch.set_num_threads(args.threads)
    steps = args.steps
    for name in WORKLOADS if args.workload == "all" else (args.workload,):
        args.steps = steps or (20 if name in ("mlp", "lstm") else 10)
        with tempfile.TemporaryDirectory() as tmp:
            timings, probes = time_workload(name, args, Path(tmp))
        memory = {}
        if name == "mlp" and not args.no_memory:
            memory = {n: peak_memory_mb(n, args) for n in timings.times}
        title = make_workload(name, args.quick).title
        print_table(title, timings, probes, memory, args)


if __name__ == "__main__":
    main()
