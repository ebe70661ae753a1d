"""Shared helpers for the run-database tests: a tiny seeded training loop."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import backprobe as bp

#: The tiny MLP's probed layers, input → output.
LAYERS = ["0", "1", "2"]


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def train_steps(probe: bp.Probe, model: nn.Module, steps: int, seed: int = 0) -> None:
    """``steps`` SGD steps on random data with the probe attached (attaches if needed)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe.attach()
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen)
        y = torch.randn(16, 1, generator=gen)
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        probe.step(loss)
        opt.step()
        opt.zero_grad()


def record(
    db: Path | None,
    name: str = "tiny",
    steps: int = 6,
    seed: int = 0,
    **probe_kwargs,
) -> bp.Probe:
    """A finished run of ``steps`` steps of the tiny MLP; returns the (closed) probe."""
    model = tiny_mlp(seed)
    probe = bp.Probe(model, db=db, name=name, **probe_kwargs)
    with probe:
        train_steps(probe, model, steps, seed)
    return probe


def count_rows(db: Path, table: str, run_id: int | None = None) -> int:
    """Rows of ``table`` as another reader sees them (a separate sqlite3 connection)."""
    conn = sqlite3.connect(db)
    try:
        if run_id is None:
            return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        return conn.execute(f"SELECT COUNT(*) FROM {table} WHERE run_id=?", (run_id,)).fetchone()[0]
    finally:
        conn.close()


def wait_until(condition: Callable[[], bool], timeout: float = 15.0, every: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; returns the last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()
