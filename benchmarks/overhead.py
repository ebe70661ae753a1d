"""Overhead of the probe against plain training and against peers, in one process run.

Workload (issue 2): a 16-layer 512-wide tanh MLP, batch 256, SGD, 2 threads. Variants
run interleaved in rounds, so that drifts of the machine hit all of them alike; each
round times ``--steps`` training steps per variant, and the table gives the median time
per step and its ratio to plain training measured in the same run.

Peers, when installed (``pip install -e ".[bench]"``): Lightning's ``grad_norm`` (norms
of parameter gradients only) and TensorBoard's ``add_histogram`` for every parameter's
gradient. Peak memory is measured per variant in a fresh subprocess (max RSS above the
RSS before the first step), because one process's high-water mark cannot be split.

    python benchmarks/overhead.py            # full table (about 2 minutes)
    python benchmarks/overhead.py --quick    # smoke run, seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
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
            db = tmp / f"{self.name.replace('/', '_')}.db"
            self.probe = bp.Probe(self.model, every=every, db=db, name=self.name).attach()
            return lambda loss, step: self.probe.step(loss)
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


def available_variants() -> list[str]:
    names = ["plain", "backprobe", "backprobe/10"]
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
    """Max RSS growth (MB) over ``args.steps`` steps of one variant in a fresh process."""
    cmd = [
        sys.executable,
        __file__,
        "--memory-of",
        variant,
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
    model = make_model(args.depth, args.width)
    x = torch.randn(args.batch, args.width)
    with tempfile.TemporaryDirectory() as tmp:
        variant = Variant(args.memory_of, model, x, Path(tmp))
        del model
        before = _rss_mb()
        variant.run(args.steps, 0)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    print(json.dumps({"peak_mb": max(peak, 0.0)}))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory column")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.depth, args.width, args.batch, args.rounds, args.steps = 4, 64, 32, 3, 5
    if args.memory_of:
        _measure_memory(args)
        return

    torch.set_num_threads(args.threads)
    names = available_variants()
    model = make_model(args.depth, args.width)
    x = torch.randn(args.batch, args.width)
    times: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        variants = [Variant(name, model, x, Path(tmp)) for name in names]
        for v in variants:  # warm-up: allocator, first-step layer ordering, DB creation
            v.run(2, 0)
        for r in range(args.rounds):
            for v in variants:
                times[v.name].append(v.run(args.steps, 2 + r * args.steps))
        for v in variants:
            if hasattr(v, "probe"):
                v.probe.close()

    plain = statistics.median(times["plain"])
    memory = {} if args.no_memory else {n: peak_memory_mb(n, args) for n in names}
    print(
        f"\n{args.depth}-layer {args.width}-wide tanh MLP, batch {args.batch}, "
        f"{args.threads} threads, torch {torch.__version__}; median of {args.rounds} rounds "
        f"x {args.steps} steps\n"
    )
    print("| variant | ms / step | ratio to plain | peak memory (MB) | memory ratio |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        median = statistics.median(times[name])
        mem = memory.get(name)
        mem_cells = (
            f"{mem:.0f} | {mem / memory['plain']:.2f}x"
            if mem is not None and memory.get("plain")
            else "- | -"
        )
        print(f"| {name} | {1e3 * median:.1f} | {median / plain:.3f}x | {mem_cells} |")


if __name__ == "__main__":
    main()
