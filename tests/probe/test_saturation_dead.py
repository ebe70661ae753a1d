"""Saturated and dead fractions on constructed inputs whose answer is known by hand, and
for every bounded activation against the derivative-based definition (derivative below
1 % of its maximum)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from .reference import assert_matches, expected_stats


def identity_then(act: nn.Module, width: int) -> nn.Sequential:
    """Linear(width, width) = identity, then ``act``: the activation sees the input as is."""
    lin = nn.Linear(width, width).double()
    with torch.no_grad():
        lin.weight.copy_(torch.eye(width, dtype=torch.float64))
        lin.bias.zero_()
    return nn.Sequential(lin, act)


def one_step(make_probe, model: nn.Module, *batches: torch.Tensor):
    probe = make_probe(model)
    with probe:
        for x in batches:
            model(x).sum().backward()
        probe.step()
    return probe


# (activation, pre-activation values, how many of them are saturated)
SATURATION_CASES = {
    "sigmoid": (nn.Sigmoid(), [-10.0, -7.0, -5.0, -1.0, 0.0, 1.0, 5.0, 7.0, 10.0, 30.0], 5),
    "tanh": (nn.Tanh(), [-5.0, -3.5, -2.5, -1.0, 0.0, 0.5, 2.5, 3.5, 5.0, 40.0], 5),
    "softsign": (nn.Softsign(), [-20.0, -9.5, -8.5, -1.0, 0.0, 1.0, 8.5, 9.5, 20.0, 0.2], 4),
    "hardtanh_at_bounds": (
        nn.Hardtanh(),
        [-3.0, -1.0, -0.999, -0.5, 0.0, 0.5, 0.999, 1.0, 2.0, 1.0],
        5,
    ),
    "hardtanh_custom_bounds": (
        nn.Hardtanh(-2.0, 3.0),
        [-5.0, -2.0, -1.99, 0.0, 1.0, 2.5, 2.999, 3.0, 3.5, -2.0],
        5,
    ),
    "hardsigmoid_at_bounds": (
        nn.Hardsigmoid(),
        [-4.0, -3.0, -2.9, -1.0, 0.0, 1.0, 2.9, 3.0, 4.0, 0.5],
        4,
    ),
}


@pytest.mark.parametrize("case", SATURATION_CASES)
def test_saturated_fraction_on_constructed_inputs(case, make_probe):
    act, values, n_saturated = SATURATION_CASES[case]
    row = torch.tensor(values, dtype=torch.float64)
    # three samples: the row, the row reversed, and a row with nothing saturated
    x = torch.stack([row, row.flip(0), torch.zeros_like(row)])
    probe = one_step(make_probe, identity_then(act, row.numel()), x)

    np.testing.assert_allclose(probe.history("saturated")[0], [np.nan, 2 * n_saturated / 30])


@pytest.mark.parametrize(
    "act",
    [nn.Sigmoid, nn.Tanh, nn.Softsign, nn.Hardtanh, lambda: nn.Hardtanh(-0.5, 2.0),
     nn.Hardsigmoid],
    ids=["sigmoid", "tanh", "softsign", "hardtanh", "hardtanh(-0.5,2)", "hardsigmoid"],
)  # fmt: skip
def test_saturated_matches_derivative_definition(act, probe_one_step):
    model = nn.Sequential(nn.Linear(8, 64), act(), nn.Linear(64, 2)).double()
    x = 10 * torch.randn(16, 8, dtype=torch.float64)
    probe, rec, _ = probe_one_step(model, [x])

    expected = expected_stats(rec, probe.layers, probe.layer_info)
    assert 0.05 < expected["saturated"][1] < 0.95  # both kinds of unit are present
    assert_matches(probe, expected)


def test_relu6_is_not_measured_for_saturation_but_for_death(make_probe):
    x = torch.tensor([[-1.0, 7.0, 2.0], [-2.0, 9.0, -1.0]], dtype=torch.float64)
    probe = one_step(make_probe, identity_then(nn.ReLU6(), 3), x)

    assert np.isnan(probe.history("saturated")[0, 1])
    np.testing.assert_allclose(probe.history("dead")[0, 1], 1 / 3)


@pytest.mark.parametrize("act", [nn.LeakyReLU, nn.GELU, nn.ELU])
def test_other_activations_have_neither_saturation_nor_death(act, make_probe):
    x = torch.tensor([[-1.0, -7.0, -2.0]], dtype=torch.float64)
    probe = one_step(make_probe, identity_then(act(), 3), x)

    assert probe.layer_info[1].family == ""
    assert np.isnan(probe.history("saturated")[0, 1])
    assert np.isnan(probe.history("dead")[0, 1])


def test_dead_fraction_on_constructed_linear_relu(make_probe):
    lin = nn.Linear(2, 6).double()
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[3, 0] = 1.0  # unit 3: x0 - 0.5, positive for one sample only
        lin.weight[4, 1] = -1.0  # unit 4: -x1, never positive
        lin.bias.copy_(torch.tensor([-1.0, -0.1, 0.0, -0.5, 0.0, 2.0], dtype=torch.float64))
    x = torch.tensor([[0.0, 1.0], [1.0, 2.0], [0.2, 3.0]], dtype=torch.float64)
    probe = one_step(make_probe, nn.Sequential(lin, nn.ReLU()), x)

    # dead: unit 0 (< 0), 1 (< 0), 2 (exactly 0), 4 (≤ 0); alive: 3 (one sample), 5
    np.testing.assert_allclose(probe.history("dead")[0], [np.nan, 4 / 6])


def test_dead_fraction_counts_conv_units_per_position(make_probe):
    conv = nn.Conv2d(1, 3, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[2, 0, 1, 1] = 1.0  # channel 2 copies the input
        conv.bias.copy_(torch.tensor([-1.0, 0.5, 0.0], dtype=torch.float64))
    x = -torch.ones(2, 1, 4, 4, dtype=torch.float64)
    x[1, 0, 0, :] = 1.0  # channel 2 is alive on the top row only (4 of 16 positions)
    probe = one_step(make_probe, nn.Sequential(conv, nn.ReLU()), x)

    # channel 0: 16 dead, channel 1: 0 dead, channel 2: 12 dead, of 48 units
    np.testing.assert_allclose(probe.history("dead")[0], [np.nan, 28 / 48])


def test_dead_units_match_reference_on_random_relu_net(probe_one_step):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 1)).double()
    with torch.no_grad():
        model[0].bias.sub_(1.0)  # push some units to death
    probe, rec, _ = probe_one_step(model, [torch.randn(6, 4, dtype=torch.float64)])

    expected = expected_stats(rec, probe.layers, probe.layer_info)
    assert 0.1 < expected["dead"][1] < 0.9
    assert_matches(probe, expected)
