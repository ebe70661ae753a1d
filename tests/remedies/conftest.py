"""Fixtures of the remedy tests: a fixed seed, one intra-op thread (the models are tiny,
and two threads' spin-waits slow a busy CI machine down), a scratch working directory,
and in-memory probes closed after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from backprobe import Probe


@pytest.fixture(autouse=True)
def _seed_thread_scratch(tmp_path, monkeypatch) -> Iterator[None]:
    torch.manual_seed(0)
    monkeypatch.chdir(tmp_path)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def make_probe():
    """``make_probe(model, **kw)``: a Probe kept in memory (``db=None``), closed at teardown."""
    probes: list[Probe] = []

    def make(model: nn.Module, **kwargs) -> Probe:
        kwargs.setdefault("db", None)
        probe = Probe(model, **kwargs)
        probes.append(probe)
        return probe

    yield make
    for probe in probes:
        probe.close()
