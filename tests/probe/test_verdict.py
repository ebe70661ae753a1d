"""The verdict on probed training steps: healthy, vanishing (and how far it reaches),
exploding and non-finite, checked against gradient norms taken from ``.grad`` directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import backprobe as bp

from .test_nonfinite import BackwardPoison, poisoned_net


def deep(act: type[nn.Module], depth: int, width: int = 8) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), act()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def probe_step(make_probe, model, x):
    probe = make_probe(model)
    with probe:
        model(x).pow(2).mean().backward()
        probe.step()
    return probe


def linear_grad_norms(model: nn.Sequential) -> tuple[list[str], np.ndarray]:
    """Names and parameter-gradient norms of the Linear layers, from ``.grad``."""
    names, norms = [], []
    for name, m in model.named_children():
        if isinstance(m, nn.Linear):
            names.append(name)
            norms.append(float(torch.cat([p.grad.reshape(-1) for p in m.parameters()]).norm()))
    return names, np.asarray(norms)


def test_three_layer_relu_net_is_healthy(make_probe):
    model = deep(nn.ReLU, depth=2, width=16)
    probe = probe_step(make_probe, model, torch.randn(32, 16))

    v = bp.verdict(probe)
    _, norms = linear_grad_norms(model)
    assert v.status == "healthy"
    assert v.step == 0 and v.layer is None
    np.testing.assert_allclose(v.ratio, norms[0] / norms[-1], rtol=1e-5)
    assert "healthy" in str(v)


def test_deep_sigmoid_net_vanishes_and_says_how_far(make_probe):
    model = deep(nn.Sigmoid, depth=10)
    probe = probe_step(make_probe, model, torch.randn(16, 8))

    names, norms = linear_grad_norms(model)
    relative = norms / norms[-1]
    starved = relative < 1e-3
    reach = names[int(np.argmin(starved)) - 1]  # last of the starved run from the input
    assert starved[0] and not starved.all()  # the test model is what it should be

    v = bp.verdict(probe)
    assert v.status == "vanishing"
    assert probe.layers[v.layer] == reach
    np.testing.assert_allclose(v.ratio, relative[0], rtol=1e-4)
    # the line is the vanishing finding's, which spans the layers up to the reach
    assert v.finding is not None and v.finding.kind == "vanishing"
    assert v.message.startswith(v.finding.summary) and f" {reach} (" in v.message


class SteepSine(nn.Module):
    """Bounded forward, derivative up to 20: the backward signal grows at every layer."""

    def forward(self, x):
        return torch.sin(20 * x)


def test_deep_net_with_steep_activation_explodes(make_probe):
    model = deep(SteepSine, depth=6)
    probe = probe_step(make_probe, model, torch.randn(16, 8))

    names, norms = linear_grad_norms(model)
    relative = norms / norms[-1]
    assert relative[0] > 1e3
    reach = names[len(names) - 1 if (relative > 1e3).all() else int(np.argmin(relative > 1e3)) - 1]

    v = bp.verdict(probe)
    assert v.status == "exploding"
    assert probe.layers[v.layer] == reach
    np.testing.assert_allclose(v.ratio, relative[0], rtol=1e-4)


def test_nan_gradient_gives_nonfinite_verdict(make_probe):
    model = poisoned_net(BackwardPoison(6, samples=[0], value=0.0), 4)
    probe = probe_step(make_probe, model, torch.randn(3, 4, dtype=torch.float64))

    v = bp.verdict(probe)
    assert v.status == "nonfinite"
    assert v.layer == 3  # the layer whose output first received the NaN gradient
    assert "gradient" in v.message


def test_verdict_of_a_chosen_step(make_probe):
    torch.manual_seed(1)
    model = deep(nn.Sigmoid, depth=10)
    probe = make_probe(model, every=2)
    with probe:
        for _ in range(3):
            model(torch.randn(16, 8)).pow(2).mean().backward()
            probe.step()
            model.zero_grad()
    assert bp.verdict(probe, step=2).step == 2
    assert bp.verdict(probe).step == 2
    assert bp.verdict(probe, step=0).status == "vanishing"
    with pytest.raises(bp.BackprobeError, match="not recorded"):
        bp.verdict(probe, step=1)


def test_huge_finite_gradients_are_measured_exactly(make_probe):
    """Entries of 1e20 are finite; their float32 squares would overflow, float64 ones don't."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    probe = make_probe(model).attach()
    loss = model(torch.ones(2, 4)).sum() * 1e20
    loss.backward()
    probe.step(loss)
    expected = torch.cat([p.grad.double().reshape(-1) for p in model[0].parameters()]).norm()
    np.testing.assert_allclose(probe.history("grad_norm")[0, 0], expected.item(), rtol=1e-6)
    assert probe.history("first_nonfinite")[-1].tolist() == [-1, -1]
    assert bp.verdict(probe).status != "nonfinite"


def test_gradient_norm_beyond_float32_range_is_exploding_not_nonfinite(make_probe):
    """Every entry is finite, but the norm exceeds float32's maximum, so the stored value
    is inf: the verdict calls it exploding at that layer, not non-finite."""
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 1))
    with torch.no_grad():
        model[1].weight.fill_(1.0)
    probe = make_probe(model).attach()
    (model(torch.ones(2, 64)).sum() * 1e37).backward()
    probe.step()
    assert torch.isfinite(model[0].weight.grad).all()
    assert np.isinf(probe.history("grad_norm")[0, 0])
    assert probe.history("first_nonfinite")[-1].tolist() == [-1, -1]
    v = bp.verdict(probe)
    assert v.status == "exploding"
    assert v.layer == 0
    assert "overflows float32" in v.message


def test_summary_table_shows_a_norm_beyond_float32_range(make_probe):
    """The overflow case of the verdict must also render in the terminal table."""
    import io

    from rich.console import Console

    from backprobe.report.text import print_summary

    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 1))
    with torch.no_grad():
        model[1].weight.fill_(1.0)
    probe = make_probe(model).attach()
    (model(torch.ones(2, 64)).sum() * 1e37).backward()
    probe.step()
    out = io.StringIO()
    print_summary(probe, console=Console(file=out, width=100, color_system=None))
    assert "inf" in out.getvalue()
    assert "overflows float32" in out.getvalue()
