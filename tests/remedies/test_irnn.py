"""IRNN (ReLU RNN with init_(…, "identity")) against a tanh RNN on the adding problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backprobe.lab.models import RecurrentModel
from backprobe.lab.tasks import adding_task
from backprobe.remedies import clip_grad_norm_, init_


def _adding_mse(make_probe, cell: str, length: int, steps: int, hidden: int) -> tuple[float, float]:
    """Train on the adding problem (Adam lr 1e-3, batch 32, clipping at 1), the loss
    recorded by the probe; returns (mean recorded loss of the last 20 steps, test MSE on
    1000 fresh sequences). The baseline (predict the mean) is 0.167."""
    torch.manual_seed(0)
    task = adding_task(32 * steps, length, seed=0)
    fresh = adding_task(1000, length, seed=1)
    model = RecurrentModel(2, hidden, 1, cell="irnn" if cell == "irnn" else "rnn")
    if cell == "irnn":
        report = init_(model, "identity")
        assert report.layers == ["rnn", "out"]
        assert torch.equal(model.rnn.weight_hh_l0, torch.eye(hidden))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = make_probe(model, every=1, time_every=lambda step: False)
    with probe:
        for s in range(steps):
            x, y = task.x[32 * s : 32 * (s + 1)], task.y[32 * s : 32 * (s + 1)]
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            clip_grad_norm_(model.parameters(), 1.0)
            probe.step(loss)
            opt.step()
            opt.zero_grad()
    with torch.no_grad():
        test = float(nn.functional.mse_loss(model(fresh.x), fresh.y))
    return float(probe.history("loss")[-20:].mean()), test


def _check_irnn_beats_tanh(make_probe, length: int, steps: int, hidden: int) -> None:
    irnn = _adding_mse(make_probe, "irnn", length, steps, hidden)
    tanh = _adding_mse(make_probe, "rnn", length, steps, hidden)
    assert tanh[1] > 0.13  # the tanh RNN stays near the 0.167 baseline
    assert irnn[1] < 0.05 and irnn[1] < 0.3 * tanh[1]  # the IRNN learns the sum
    assert irnn[0] < tanh[0]


def test_irnn_beats_tanh_rnn_on_adding_quick(make_probe):
    _check_irnn_beats_tanh(make_probe, length=30, steps=500, hidden=32)


@pytest.mark.slow
def test_irnn_beats_tanh_rnn_on_adding_at_t100(make_probe):
    _check_irnn_beats_tanh(make_probe, length=100, steps=600, hidden=64)
