"""DeepMLP: layer layout and names, activations, and what each init draws (measured)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from backprobe.lab.models import ACTIVATIONS, INITS, DeepMLP


def test_layout_names_and_shapes() -> None:
    model = DeepMLP(8, 16, 3, 4, activation="tanh")
    assert [name for name, _ in model.named_children()] == [
        "fc1",
        "act1",
        "fc2",
        "act2",
        "fc3",
        "act3",
        "out",
    ]
    assert (model.fc1.in_features, model.fc1.out_features) == (8, 16)
    assert (model.fc3.in_features, model.fc3.out_features) == (16, 16)
    assert (model.out.in_features, model.out.out_features) == (16, 4)
    assert model(torch.randn(5, 8)).shape == (5, 4)


@pytest.mark.parametrize("depth", [0, 1, 50])
def test_depth_counts_hidden_layers(depth: int) -> None:
    model = DeepMLP(8, 16, depth, 3, activation="relu")
    assert model.depth == depth
    assert len(model.linears) == depth + 1
    assert sum(isinstance(m, nn.ReLU) for m in model) == depth
    assert model.linears[-1] is model.out
    assert model(torch.randn(2, 8)).shape == (2, 3)


@pytest.mark.parametrize(
    ("activation", "kind"), [("sigmoid", nn.Sigmoid), ("tanh", nn.Tanh), ("relu", nn.ReLU)]
)
def test_activation(activation: str, kind: type[nn.Module]) -> None:
    model = DeepMLP(4, 8, 4, 2, activation=activation)  # type: ignore[arg-type]
    acts = [m for name, m in model.named_children() if name.startswith("act")]
    assert len(acts) == 4
    assert all(type(m) is kind for m in acts)


def _wide(init: str, activation: str = "relu") -> DeepMLP:
    """Square 256 x 256 hidden layers: 65 536 weights, enough to measure a std to ~1%."""
    torch.manual_seed(0)
    return DeepMLP(256, 256, 2, 256, activation=activation, init=init)  # type: ignore[arg-type]


def test_he_init_std_is_sqrt_2_over_fan_in() -> None:
    model = _wide("he")
    for linear in model.linears:
        expected = math.sqrt(2.0 / linear.in_features)
        assert linear.weight.std().item() == pytest.approx(expected, rel=0.03)
        assert linear.weight.mean().item() == pytest.approx(0.0, abs=0.01 * expected)
        assert torch.all(linear.bias == 0)


def test_he_init_keeps_relu_signal_through_depth() -> None:
    """He's promise: the signal's second moment keeps its size across 50 ReLU layers.
    PyTorch's default init (weight variance 1/(3 fan_in), halved again by ReLU) shrinks
    the input's part of it ~6x per layer: after 50 layers the output no longer depends
    on x (its variance over the batch is float noise; only the biases' constant is left)."""
    torch.manual_seed(0)
    x = torch.randn(512, 64)
    he = DeepMLP(64, 256, 50, 10, activation="relu", init="he")
    default = DeepMLP(64, 256, 50, 10, activation="relu", init="default")
    with torch.no_grad():
        ratio_he = he(x).pow(2).mean() / x.pow(2).mean()
        ratio_default = default(x).var(0).mean() / x.var(0).mean()
    assert 0.1 < ratio_he.item() < 10
    assert ratio_default.item() < 1e-10


def test_default_init_is_pytorch_linear_default() -> None:
    model = _wide("default")
    for linear in model.linears:
        bound = 1.0 / math.sqrt(linear.in_features)
        assert linear.weight.abs().max().item() <= bound
        assert linear.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
        assert linear.bias.abs().max().item() <= bound
        assert torch.any(linear.bias != 0)


def test_xavier_init_is_glorot_uniform() -> None:
    model = _wide("xavier", "tanh")
    for linear in model.linears:
        bound = math.sqrt(6.0 / (linear.in_features + linear.out_features))
        assert linear.weight.abs().max().item() <= bound
        assert linear.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
        assert torch.all(linear.bias == 0)


@pytest.mark.parametrize(("activation", "gain"), [("relu", math.sqrt(2)), ("tanh", 5 / 3)])
def test_orthogonal_init_scales_an_orthogonal_matrix_by_the_gain(
    activation: str, gain: float
) -> None:
    model = _wide("orthogonal", activation)
    eye = torch.eye(256)
    for linear in model.linears:
        w = linear.weight.detach()
        assert torch.allclose(w @ w.T, gain**2 * eye, atol=1e-4)
        assert torch.all(linear.bias == 0)


def test_seeded_models_are_identical_and_reset_redraws() -> None:
    torch.manual_seed(3)
    a = DeepMLP(8, 16, 5, 4, init="he")
    torch.manual_seed(3)
    b = DeepMLP(8, 16, 5, 4, init="he")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    before = a.fc1.weight.detach().clone()
    a.reset_parameters()
    assert not torch.equal(before, a.fc1.weight)


def test_every_activation_and_init_builds() -> None:
    for activation in ACTIVATIONS:
        for init in INITS:
            model = DeepMLP(3, 4, 2, 2, activation=activation, init=init)  # type: ignore[arg-type]
            assert torch.isfinite(model(torch.randn(2, 3))).all()
            assert activation in repr(model) and f"init={init}" in repr(model)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"activation": "gelu"},
        {"init": "lecun"},
        {"depth": -1},
        {"width": 0},
    ],
)
def test_bad_arguments_are_refused(kwargs: dict) -> None:
    args = {"in_features": 4, "width": 8, "depth": 2, "out_features": 2, **kwargs}
    with pytest.raises(ValueError, match="Expected"):
        DeepMLP(**args)
