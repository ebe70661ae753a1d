"""Fixtures of the probe tests: a fixed seed, a scratch working directory, and a one-step
run of a probe next to its plain-torch reference."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import pytest
import torch
from torch import nn

from backprobe import Probe

from .models import loss_fn
from .reference import Recorder


@pytest.fixture(autouse=True)
def _seed_and_scratch_dir(tmp_path, monkeypatch):
    """Same random numbers in every test; a stray default run database lands in tmp."""
    torch.manual_seed(0)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def probe_one_step(make_probe):
    """``probe_one_step(model, micro_batches)`` runs one training step (forward and
    backward of each micro-batch, then ``probe.step``) on ``model`` with a probe attached,
    and the same on an untouched copy of the model watched by a :class:`Recorder`.

    Returns ``(probe, recorder, reference_loss)``; the recorder's layers are the probe's.
    """

    def run(
        model: nn.Module,
        micro_batches: Sequence[torch.Tensor],
        loss: Callable[[torch.Tensor], torch.Tensor] = loss_fn,
        **probe_kwargs,
    ) -> tuple[Probe, Recorder, float]:
        twin = copy.deepcopy(model)
        probe = make_probe(model, **probe_kwargs)
        recorder = Recorder(twin, probe.layers)
        with probe:
            for x in micro_batches:
                value = loss(model(x))
                value.backward()
            assert probe.step(value)
        recorder.watch(probe.layers)  # and the residual blocks found at the step
        for x in micro_batches:
            ref = loss(twin(x))
            ref.backward()
        recorder.remove()
        return probe, recorder, float(ref.detach())

    return run
