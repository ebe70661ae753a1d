"""The activation table (backprobe.activations) against brute force: each record's γ,
saturation threshold and death against autograd on a dense grid, its exact float64 forms
against its torch function, and recognition of torch, Hugging Face and timm classes
(the probe then measures a Hugging Face activation like its torch counterpart)."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import backprobe.activations
from backprobe import Probe
from backprobe.activations import (
    ACTIVATION_KINDS,
    SATURATION_FRACTION,
    ActivationKind,
    Saturation,
    activation_kind,
)

#: Every activation module the probe watched by default before the table, and its record.
TORCH_ACTIVATIONS = {
    nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Hardtanh: "hardtanh",
    nn.Hardsigmoid: "hardsigmoid", nn.Softsign: "softsign", nn.ReLU: "relu",
    nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu", nn.PReLU: "prelu", nn.RReLU: "rrelu",
    nn.ELU: "elu", nn.SELU: "selu", nn.CELU: "celu", nn.GELU: "gelu", nn.SiLU: "silu",
    nn.Mish: "mish", nn.Softplus: "softplus", nn.Hardswish: "hardswish",
    nn.LogSigmoid: "logsigmoid", nn.Tanhshrink: "tanhshrink", nn.Softshrink: "softshrink",
    nn.Hardshrink: "hardshrink", nn.Threshold: "threshold", nn.GLU: "glu",
}  # fmt: skip

#: Hugging Face activation classes (transformers.activations), how to build each as its
#: ACT2CLS entry does, and the record each belongs to.
HF_ACTIVATIONS = {
    "GELUActivation": ({}, "gelu"),
    "NewGELUActivation": ({}, "gelu_tanh"),
    "FastGELUActivation": ({}, "gelu_tanh"),
    "AccurateGELUActivation": ({}, "gelu_tanh"),
    "GELUTanh": ({}, "gelu_tanh"),
    "PytorchGELUTanh": ({}, "gelu_tanh"),
    "QuickGELUActivation": ({}, "quick_gelu"),
    "ClippedGELUActivation": ({"min": -10, "max": 10}, "clipped_gelu"),
    "SiLUActivation": ({}, "silu"),
    "MishActivation": ({}, "mish"),
    "LinearActivation": ({}, "linear"),
    "LaplaceActivation": ({}, "laplace"),
    "ReLUSquaredActivation": ({}, "relu_squared"),
    "SqrtSoftplusActivation": ({}, "sqrt_softplus"),
}

#: A dense float64 grid that steps over no kink or clamp bound exactly.
GRID = torch.linspace(-30.0, 30.0, 200_001, dtype=torch.float64) + math.pi * 1e-6
ELEMENTWISE = [k for k in ACTIVATION_KINDS if k.gamma is not None]


def value_and_slope(kind: ActivationKind) -> tuple[torch.Tensor, torch.Tensor]:
    """φ and φ' (autograd) of the record's function on GRID."""
    x = GRID.clone().requires_grad_(True)
    y = kind.function(x)
    (slope,) = torch.autograd.grad(y.sum(), x)
    return y.detach(), slope


def saturated_by_output(y: torch.Tensor, sat: Saturation) -> torch.Tensor:
    distance = (y - sat.center).abs()
    return distance >= sat.half_width if sat.inclusive else distance > sat.half_width


# ------------------------------------------------------------- the records by brute force


@pytest.mark.parametrize("kind", ELEMENTWISE, ids=lambda k: k.name)
def test_gamma_is_the_largest_slope_autograd_finds(kind: ActivationKind) -> None:
    _, slope = value_and_slope(kind)
    steepest = float(slope.abs().max())
    if math.isinf(kind.gamma):
        assert steepest > 50.0  # grows with the grid's reach
    else:
        assert steepest <= kind.gamma * (1 + 1e-7)  # hardsigmoid's backward: float32 1/6
        assert steepest == pytest.approx(kind.gamma, rel=1e-3)  # SELU peaks just below 0


def test_glu_has_no_gamma_because_it_is_not_element_wise() -> None:
    (glu,) = [k for k in ACTIVATION_KINDS if k.gamma is None]
    assert glu.name == "glu"
    assert glu.function(torch.ones(2, 4)).shape == (2, 2)


@pytest.mark.parametrize(
    "kind", [k for k in ELEMENTWISE if k.saturation is not None], ids=lambda k: k.name
)
def test_saturation_read_from_the_output_is_a_slope_below_the_fraction(
    kind: ActivationKind,
) -> None:
    y, slope = value_and_slope(kind)
    threshold = SATURATION_FRACTION * kind.gamma
    by_slope = slope.abs() < threshold
    by_output = saturated_by_output(y, kind.saturation)
    # they may differ only where the slope is the threshold to rounding
    disagree = by_slope != by_output
    assert torch.allclose(slope.abs()[disagree], torch.tensor(threshold, dtype=y.dtype))
    assert 0 < int(by_output.sum()) < GRID.numel()  # both kinds of unit are on the grid


def test_a_clamp_saturates_on_its_own_bounds() -> None:
    sat = activation_kind(nn.Hardtanh).saturation_of(nn.Hardtanh(-0.5, 2.0))
    assert sat == Saturation(0.75, 1.25, inclusive=True)
    assert activation_kind("hardtanh").saturation_of() == Saturation(0.0, 1.0, inclusive=True)


@pytest.mark.parametrize("kind", ELEMENTWISE, ids=lambda k: k.name)
def test_units_can_die_exactly_where_a_non_positive_output_passes_no_gradient(
    kind: ActivationKind,
) -> None:
    y, slope = value_and_slope(kind)
    off = y <= 0
    dies = bool(off.any()) and bool((slope[off] == 0).all())
    if kind.can_die:
        assert dies
    elif kind.saturation is None and kind.name != "threshold":
        # bounded clamps reach 0 flat too, and are measured as saturated; nn.Threshold has
        # no default arguments: at the record's (0, 0) it is ReLU, with a value above 0 it
        # never outputs ≤ 0, so its units are not counted as dead
        assert not dies


@pytest.mark.parametrize("kind", [k for k in ACTIVATION_KINDS if k.exact], ids=lambda k: k.name)
def test_exact_forms_match_the_function_and_autograd(kind: ActivationKind) -> None:
    x = np.linspace(-15.0, 15.0, 3001) + 1e-7
    t = torch.tensor(x, requires_grad=True)
    (dy,) = torch.autograd.grad(kind.function(t).sum(), t)
    np.testing.assert_allclose(kind.exact.phi(x), kind.function(t).detach(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(kind.exact.dphi(x), dy, rtol=1e-12, atol=1e-14)


def test_init_gains_are_torchs_where_torch_knows_them() -> None:
    for name in ("relu", "tanh", "sigmoid", "linear", "leaky_relu", "selu"):
        assert activation_kind(name).init_gain == pytest.approx(nn.init.calculate_gain(name))


# -------------------------------------------------------------------------- recognition


def test_every_torch_activation_the_probe_watches_is_in_the_table() -> None:
    for cls, name in TORCH_ACTIVATIONS.items():
        assert activation_kind(cls).name == name
        assert activation_kind(cls).nonlinear
    assert activation_kind(nn.Identity()).name == "linear"
    assert not activation_kind(nn.Identity()).nonlinear


def test_names_aliases_functions_subclasses_and_strangers() -> None:
    assert activation_kind(" Swish ").name == "silu"
    assert activation_kind("identity").name == "linear"
    assert activation_kind(torch.special.expit).name == "sigmoid"
    assert activation_kind(F.tanh).name == "tanh"

    class MyReLU(nn.ReLU):
        pass

    assert activation_kind(MyReLU()).name == "relu"
    assert activation_kind(nn.ReLU6()).name == "relu6"  # before its base, Hardtanh
    for stranger in ("", "softmax", nn.Softmax(dim=1), nn.Linear, torch.exp, 3.0):
        assert activation_kind(stranger) is None


def _class_in(module: str, name: str) -> type[nn.Module]:
    return type(name, (nn.Module,), {"__module__": module})


def test_timm_classes_are_known_by_package_and_name_only() -> None:
    assert activation_kind(_class_in("timm.layers.activations", "Swish")).name == "silu"
    assert activation_kind(_class_in("timm.layers.activations_me", "HardMishMe")).name == (
        "hard_mish"
    )
    assert activation_kind(_class_in("my_models.layers", "Swish")) is None


def _hf_module(name: str) -> nn.Module:
    activations = pytest.importorskip("transformers.activations")
    kwargs, _ = HF_ACTIVATIONS[name]
    return getattr(activations, name)(**kwargs)


@pytest.mark.parametrize("name", HF_ACTIVATIONS)
def test_hugging_face_classes_are_recognised_and_compute_their_records_function(name) -> None:
    module = _hf_module(name)
    kind = activation_kind(module)
    assert kind is not None and kind.name == HF_ACTIVATIONS[name][1]
    x = torch.linspace(-12.0, 12.0, 2401, dtype=torch.float64)
    torch.testing.assert_close(module(x), kind.function(x), rtol=1e-6, atol=1e-9)


def _probe_one_step(act: nn.Module, x: torch.Tensor) -> Probe:
    """Linear(n, n) = identity, then ``act``: the activation sees ``x`` as is."""
    lin = nn.Linear(x.shape[1], x.shape[1]).double()
    with torch.no_grad():
        lin.weight.copy_(torch.eye(x.shape[1], dtype=torch.float64))
        lin.bias.zero_()
    model = nn.Sequential(lin, act)
    probe = Probe(model, db=None)
    with probe:
        model(x).sum().backward()
        probe.step()
    return probe


def test_the_probe_counts_dead_units_of_hugging_faces_squared_relu() -> None:
    x = torch.tensor([[-1.0, 2.0, -3.0, 0.0], [-2.0, 1.0, 4.0, -1.0]], dtype=torch.float64)
    probe = _probe_one_step(_hf_module("ReLUSquaredActivation"), x)
    assert probe.layers == ["0", "1"]
    assert probe.layer_info[1].family == "relu_squared"
    np.testing.assert_allclose(probe.history("dead")[0, 1], 2 / 4)  # units 0 and 3
    assert np.isnan(probe.history("saturated")[0, 1])


def test_the_probe_counts_saturated_units_of_hugging_faces_laplace() -> None:
    # Φ((x − 0.707)/0.282): slope below 1 % of its peak beyond 3.03σ ≈ 0.855 from μ
    x = torch.tensor([[-1.0, 0.0, 0.7, 1.2, 1.6, 3.0]], dtype=torch.float64)
    probe = _probe_one_step(_hf_module("LaplaceActivation"), x)
    assert probe.layer_info[1].family == "laplace"
    np.testing.assert_allclose(probe.history("saturated")[0, 1], 3 / 6)  # -1.0, 1.6, 3.0
    assert np.isnan(probe.history("dead")[0, 1])


def test_the_probe_watches_hugging_faces_gelu_without_saturation_or_death() -> None:
    x = torch.tensor([[-7.0, -1.0, 2.0]], dtype=torch.float64)
    probe = _probe_one_step(_hf_module("GELUActivation"), x)
    assert probe.layers == ["0", "1"] and probe.layer_info[1].family == ""


def test_the_module_example_runs() -> None:
    result = doctest.testmod(backprobe.activations)
    assert result.attempted > 0 and result.failed == 0
