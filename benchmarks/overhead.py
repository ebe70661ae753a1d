"""Overhead of the probe against plain training and against peers, in one process run.

Workloads: ``mlp``, a 16-layer 512-wide tanh MLP, batch 256, SGD, 2 threads; ``lstm``,
an LSTM (input 32, hidden 128, T = 100, batch 64) read at its last step, against the probe
with time profiles (||dL/dh_t||, the Jacobian decay) every 10 steps on a sub-batch of 8.
Variants
run interleaved in rounds, so that drifts of the machine hit all of them alike: each
round times ``--steps`` training steps of every variant between two runs of plain
training, and a variant's ratio in that round is against the mean of those two. The
table gives the median time per step, and the median and interquartile range of the
per-round ratios.

The ``read floor`` row reads every tensor a recorded step must see once and computes
nothing (:class:`ReadFloor`): what any hook-based probe of these statistics costs at
least on the machine at hand.

Peers, when installed (``pip install -e ".[bench]"``): Lightning's ``grad_norm`` (norms
of parameter gradients only) and TensorBoard's ``add_histogram`` for every parameter's
gradient. Peak memory is measured per variant in a fresh subprocess: the process's peak
resident memory over the timed steps, with the kernel's high-water mark reset after a
warm-up (Linux), so that imports and set-up do not count.

    python benchmarks/overhead.py                   # full MLP table (about 2 minutes)
    python benchmarks/overhead.py --workload lstm   # the recurrent row
    python benchmarks/overhead.py --quick           # smoke run, seconds
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import backprobe as bp

Step = Callable[[], None]


def make_model(depth: int, width: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers)


class LastStepLSTM(nn.Module):
    """An LSTM read at its last time step: [B, T, n_in] → [B, 1]."""

    def __init__(self, n_in: int, hidden: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lstm = nn.LSTM(n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def make_workload(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor]:
    """The model and its input batch for ``args.workload``."""
    if args.workload == "lstm":
        model: nn.Module = LastStepLSTM(32, args.width)
        return model, torch.randn(args.batch, args.length, 32)
    return make_model(args.depth, args.width), torch.randn(args.batch, args.width)


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

    def _on_forward(self, module: nn.Module, inputs: object, out: torch.Tensor) -> None:
        if torch.is_grad_enabled():
            self.sums.append(out.detach().sum().reshape(1))
            out.register_hook(lambda grad: self.sums.append(grad.sum().reshape(1)))

    def step(self) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        norms = torch._foreach_norm([p.detach() for p in self.params] + grads)
        torch.cat([*self.sums, torch.stack(norms)]).cpu().numpy()
        self.sums = []


class Variant:
    """One way of training: a model copy, its optimizer, and what is done per step."""

    def __init__(self, name: str, model: nn.Module, x: torch.Tensor, tmp: Path) -> None:
        self.name = name
        self.model = copy.deepcopy(model)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4)
        self.x = x
        self.after_backward = self._setup(tmp)

    def _setup(self, tmp: Path) -> Callable[[torch.Tensor, int], None]:
        if self.name == "plain":
            return lambda loss, step: None
        if self.name.startswith("backprobe"):
            every = 10 if self.name.endswith("/10") else 1
            db = tmp / f"{self.name.replace('/', '_').replace(' ', '_')}.db"
            self.probe = bp.Probe(
                self.model, every=every, db=db, name=self.name, time_batch=8
            ).attach()
            return lambda loss, step: self.probe.step(loss)
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

    def run(self, steps: int, first_step: int) -> float:
        """Train ``steps`` steps; return seconds per step."""
        start = time.perf_counter()
        for i in range(steps):
            loss = self.model(self.x).square().mean()
            loss.backward()
            self.after_backward(loss, first_step + i)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) / steps


def available_variants(workload: str) -> list[str]:
    if workload == "lstm":
        return ["plain", "backprobe time/10"]
    names = ["plain", "backprobe", "backprobe/10", "read floor"]
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
    """Peak resident memory (MB) over ``args.steps`` steps of one variant, in a fresh
    process."""
    cmd = [
        sys.executable,
        __file__,
        "--memory-of",
        variant,
        "--workload",
        args.workload,
        "--length",
        str(args.length),
        "--depth",
        str(args.depth),
        "--width",
        str(args.width),
        "--batch",
        str(args.batch),
        "--steps",
        str(max(args.steps, 5)),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_mb"])


def _measure_memory(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model, x = make_workload(args)
    with tempfile.TemporaryDirectory() as tmp:
        variant = Variant(args.memory_of, model, x, Path(tmp))
        del model
        variant.run(2, 0)  # first step: allocator warm-up, probe's layer order, DB file
        _reset_peak_rss()
        variant.run(args.steps, 2)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=("mlp", "lstm"), default="mlp")
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--width", type=int, default=None, help="MLP width / LSTM hidden")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--length", type=int, default=100, help="LSTM sequence length")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory column")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    lstm = args.workload == "lstm"
    args.width = args.width or (128 if lstm else 512)
    args.batch = args.batch or (64 if lstm else 256)
    if args.quick:
        args.depth, args.width, args.batch, args.rounds, args.steps = 4, 64, 32, 3, 5
        args.length = 20
        if lstm:  # every=10 needs 10 steps per round to record at all
            args.rounds, args.steps = 2, 10
    if args.memory_of:
        _measure_memory(args)
        return

    torch.set_num_threads(args.threads)
    names = available_variants(args.workload)
    model, x = make_workload(args)
    ratios: dict[str, list[float]] = {name: [] for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        variants = {name: Variant(name, model, x, Path(tmp)) for name in names}
        for v in variants.values():  # warm-up: allocator, first-step layer order, DB file
            v.run(2, 0)
        gc.disable()  # a collection inside one variant's timing would bias it
        for r in range(args.rounds):
            step = 2 + r * args.steps
            before = variants["plain"].run(args.steps, step)
            measured = {n: variants[n].run(args.steps, step) for n in names if n != "plain"}
            after = variants["plain"].run(args.steps, step)
            plain = (before + after) / 2  # paired: the machine's speed in this round
            measured["plain"] = plain
            for name, seconds in measured.items():
                times[name].append(seconds)
                ratios[name].append(seconds / plain)
        gc.enable()
        for v in variants.values():
            if hasattr(v, "probe"):
                v.probe.close()

    memory = {} if args.no_memory else {n: peak_memory_mb(n, args) for n in names}
    workload = (
        f"LSTM, hidden {args.width}, T = {args.length}, batch {args.batch}"
        if lstm
        else f"{args.depth}-layer {args.width}-wide tanh MLP, batch {args.batch}"
    )
    print(
        f"\n{workload}, {args.threads} threads, torch {torch.__version__}; {args.rounds} "
        f"rounds of {args.steps} steps per variant, each round between two plain runs\n"
    )
    print("| variant | ms / step | ratio to plain (median, IQR) | peak memory (MB) |")
    print("|---|---:|---:|---:|")
    for name in names:
        q1, median, q3 = statistics.quantiles(ratios[name], n=4)
        mem = memory.get(name)
        mem_cell = "-" if mem is None else f"{mem:.0f}"
        print(
            f"| {name} | {1e3 * statistics.median(times[name]):.1f} | "
            f"{median:.3f}x ({q1:.3f}-{q3:.3f}) | {mem_cell} |"
        )


if __name__ == "__main__":
    main()
