"""Non-finite values: samples with a NaN or an infinity in a layer's output or in the
gradient reaching it are counted, and the first hook call that saw one is located (layer,
forward or backward)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import backprobe as bp

from .reference import assert_matches, expected_stats, first_nonfinite


class Poison(nn.Module):
    """Multiplies the chosen samples by ``value`` (inf or NaN); owns a parameter, so it is
    probed by default."""

    def __init__(self, width: int, samples: list[int], value: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))
        self.samples = samples
        self.value = value

    def forward(self, x):
        factor = torch.ones(x.shape[0], 1, dtype=x.dtype)
        factor[self.samples] = self.value
        return x * self.scale * factor


class NaNGradient(torch.autograd.Function):
    """Identity forward; the backward returns NaN for the chosen samples."""

    @staticmethod
    def forward(ctx, x, samples):
        ctx.samples = samples
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        grad[ctx.samples] = float("nan")
        return grad, None


class BackwardPoison(Poison):
    def forward(self, x):
        return NaNGradient.apply(x * self.scale, self.samples)


def poisoned_net(poison: nn.Module, at: int) -> nn.Sequential:
    """Linear → Tanh → Linear → Tanh → Linear with ``poison`` inserted at position ``at``."""
    layers: list[nn.Module] = [
        nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 1)
    ]  # fmt: skip
    layers.insert(at, poison)
    return nn.Sequential(*layers).double()


COUNTS = ("nonfinite_out", "nonfinite_grad", "nonfinite")


def _sum(out):
    return out.sum()


@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
@pytest.mark.parametrize("at", [0, 2, 4])
def test_forward_poison_is_located_and_counted(value, at, probe_one_step):
    # at 0 the poison sees the input; it is then the first layer
    width = 4 if at == 0 else 6
    model = poisoned_net(Poison(width, samples=[1, 3], value=value), at)
    probe, rec, _ = probe_one_step(model, [torch.randn(5, 4, dtype=torch.float64)], loss=_sum)

    k = probe.layers.index(str(at))
    assert k == at  # layers in forward order
    np.testing.assert_array_equal(probe.history("first_nonfinite")[0], [k, 0])
    assert first_nonfinite(rec, probe.layers) == (k, 0)
    out = probe.history("nonfinite_out")[0]
    assert out[k] == 2  # two samples, however many of their elements
    assert (out[:k] == 0).all()
    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info), stats=COUNTS)
    assert np.isnan(probe.history("loss")[0])


@pytest.mark.parametrize("at", [2, 4])
def test_backward_nan_is_located_in_phase_one(at, probe_one_step):
    model = poisoned_net(BackwardPoison(6, samples=[0, 2, 4], value=0.0), at)
    probe, rec, _ = probe_one_step(model, [torch.randn(6, 4, dtype=torch.float64)], loss=_sum)

    k = probe.layers.index(str(at))
    before = k - 1  # the layer whose output receives the NaN gradient first
    np.testing.assert_array_equal(probe.history("first_nonfinite")[0], [before, 1])
    assert first_nonfinite(rec, probe.layers) == (before, 1)
    np.testing.assert_array_equal(probe.history("nonfinite_out")[0], np.zeros(6))
    grad = probe.history("nonfinite_grad")[0]
    assert grad[before] == 3
    assert (grad[k:] == 0).all()  # the poison's own output and everything after are clean
    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info), stats=COUNTS)
    assert np.isfinite(probe.history("loss")[0])


def test_nonfinite_sums_forward_and_backward_counts(probe_one_step):
    model = poisoned_net(Poison(6, samples=[2], value=float("nan")), 2)
    probe, _, _ = probe_one_step(model, [torch.randn(4, 4, dtype=torch.float64)], loss=_sum)

    np.testing.assert_array_equal(
        probe.history("nonfinite")[0],
        probe.history("nonfinite_out")[0] + probe.history("nonfinite_grad")[0],
    )
    assert probe.history("nonfinite")[0].sum() > probe.history("nonfinite_out")[0].sum()


def test_clean_step_after_a_poisoned_one_reports_nothing(make_probe):
    poison = Poison(6, samples=[0], value=float("inf"))
    model = poisoned_net(poison, 2)
    probe = make_probe(model)
    with probe:
        for value in (float("inf"), 1.0):
            poison.value = value
            model(torch.randn(3, 4, dtype=torch.float64)).sum().backward()
            probe.step()
            model.zero_grad()
    np.testing.assert_array_equal(probe.history("first_nonfinite"), [[2, 0], [-1, -1]])
    np.testing.assert_array_equal(probe.history("nonfinite")[1], np.zeros(6))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_large_finite_float64_values_are_not_nonfinite(make_probe):
    """Values above float32's maximum are finite in a float64 model."""
    model = nn.Sequential(Poison(4, samples=[0, 1, 2], value=1e39), nn.Linear(4, 1)).double()
    with torch.no_grad():
        model[1].weight.fill_(1e-39)
    probe = make_probe(model)
    with probe:
        model(torch.rand(3, 4, dtype=torch.float64) + 1).sum().backward()
        probe.step()
    np.testing.assert_array_equal(probe.history("nonfinite")[0], [0, 0])
    np.testing.assert_array_equal(probe.history("first_nonfinite")[0], [-1, -1])


def test_verdict_reports_the_poisoned_layer(make_probe):
    model = poisoned_net(Poison(6, samples=[1], value=float("inf")), 4)
    probe = make_probe(model)
    with probe:
        model(torch.randn(3, 4, dtype=torch.float64)).sum().backward()
        probe.step()
    v = bp.verdict(probe)
    assert v.status == "nonfinite"
    assert v.layer == 4
    assert "layer 4 (4)" in v.message and "forward" in v.message
