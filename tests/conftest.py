"""Fixtures every test directory shares: in-memory probes on a fixed schedule."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from torch import nn

from backprobe import Probe


@pytest.fixture
def make_probe() -> Iterator:
    """``make_probe(model, **kw)``: a Probe kept in memory (``db=None``), closed at teardown.

    It records every step unless the test asks for a schedule or a budget: the default
    overhead budget spaces recordings by wall-clock time, so which steps a test sees would
    depend on the machine's speed.
    """
    probes: list[Probe] = []

    def make(model: nn.Module, **kwargs) -> Probe:
        kwargs.setdefault("db", None)
        if "budget" not in kwargs:
            kwargs.setdefault("every", 1)
        probe = Probe(model, **kwargs)
        probes.append(probe)
        return probe

    yield make
    for probe in probes:
        probe.close()
