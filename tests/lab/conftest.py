"""Fixtures of the lab tests: one intra-op thread, and the quick demo run once."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from rich.console import Console

from backprobe.lab.chapter import ChapterResult
from backprobe.lab.demo import run_demo


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The lab's tensors are tiny: one intra-op thread is faster, and on a busy CI
    machine two threads' spin-waits made these tests several times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[ChapterResult]]:
    """The quick demo, every chapter, run once for the whole session: (run database,
    what it printed at 80 columns, each chapter's result in order)."""
    db = tmp_path_factory.mktemp("demo") / "runs.db"
    out = io.StringIO()
    console = Console(file=out, width=80, color_system=None)
    results = run_demo(db=db, quick=True, seed=0, console=console)
    return db, out.getvalue(), results
