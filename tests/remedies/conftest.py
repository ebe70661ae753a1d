"""Fixtures of the remedy tests: a fixed seed, one intra-op thread (the models are tiny,
and two threads' spin-waits slow a busy CI machine down) and a scratch working
directory (in-memory probes come from the shared ``make_probe`` fixture)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_thread_scratch(tmp_path, monkeypatch) -> Iterator[None]:
    torch.manual_seed(0)
    monkeypatch.chdir(tmp_path)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
