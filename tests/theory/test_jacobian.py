"""Jacobian spectra (backprobe.theory.jacobian) against torch.autograd.functional.jacobian,
deep linear orthogonal nets (exact isometry) and deep tanh nets in both phases."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from backprobe.errors import BackprobeError
from backprobe.theory import jacobian as jac_module
from backprobe.theory.jacobian import (
    EXPLODING,
    ILL_CONDITIONED,
    ISOMETRIC,
    VANISHING,
    IsometrySummary,
    TheoryInputError,
    isometry_summary,
    jacobian_singular_values,
    layer_jacobian_singular_values,
)


def _reference(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Per-example singular values from torch.autograd.functional.jacobian, in float64."""
    model64 = copy.deepcopy(model).double()
    rows = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1].double()
        out = model64(xb)
        j = torch.autograd.functional.jacobian(model64, xb).reshape(out.numel(), xb.numel())
        rows.append(torch.linalg.svdvals(j))
    return torch.stack(rows).numpy()


def _mlp(act: type[nn.Module], width: int = 12, depth: int = 3, d_in: int = 7) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(d_in, width), act()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), act()]
    layers.append(nn.Linear(width, 5))
    return nn.Sequential(*layers)


def _deep_tanh(sigma_w: float, depth: int = 12, width: int = 48) -> nn.Sequential:
    torch.manual_seed(1)
    layers: list[nn.Module] = []
    for _ in range(depth):
        lin = nn.Linear(width, width, bias=False)
        nn.init.normal_(lin.weight, std=sigma_w / math.sqrt(width))
        layers += [lin, nn.Tanh()]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU])
def test_full_matches_autograd_on_mlps(act: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = _mlp(act)
    x = torch.randn(4, 7)
    got = jacobian_singular_values(model, x, method="full")
    assert got.shape == (4, 5) and got.dtype == np.float64
    np.testing.assert_allclose(got, _reference(model, x), rtol=1e-8, atol=1e-12)
    assert next(model.parameters()).dtype == torch.float32  # model left as it was


def test_full_matches_autograd_on_conv_net_and_uses_jacfwd_when_wider_out() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten()
    )
    x = torch.randn(2, 2, 5, 5)  # D_in = 50, D_out = 4·3·3 = 36
    got = jacobian_singular_values(model, x, method="full")
    np.testing.assert_allclose(got, _reference(model, x), rtol=1e-8, atol=1e-12)
    wide = nn.Sequential(nn.Linear(3, 10), nn.Tanh(), nn.Linear(10, 9))  # D_out > D_in
    x3 = torch.randn(2, 3)
    np.testing.assert_allclose(
        jacobian_singular_values(wide, x3, method="full"), _reference(wide, x3), rtol=1e-8
    )


def test_plain_callable_gets_float64_input() -> None:
    w = torch.randn(6, 4, dtype=torch.float64)
    got = jacobian_singular_values(lambda z: torch.tanh(z @ w.T), torch.zeros(1, 4))
    np.testing.assert_allclose(got[0], torch.linalg.svdvals(w).numpy(), rtol=1e-12)


def test_top_k_matches_full_on_64_wide_mlp() -> None:
    torch.manual_seed(0)
    model = _mlp(nn.Tanh, width=64, depth=3, d_in=64)
    model[-1] = nn.Linear(64, 64)
    x = torch.randn(2, 64)
    full = jacobian_singular_values(model, x, method="full")
    top = jacobian_singular_values(model, x, k=6, method="top", seed=3)
    assert top.shape == (2, 6)
    np.testing.assert_allclose(top, full[:, :6], rtol=1e-4)
    np.testing.assert_allclose(
        jacobian_singular_values(model, x, k=6, method="full"), full[:, :6], rtol=0
    )


def test_auto_switches_to_top_above_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = _mlp(nn.Tanh, width=20)
    x = torch.randn(1, 7)
    full = jacobian_singular_values(model, x, method="auto")
    assert full.shape == (1, 5)
    monkeypatch.setattr(jac_module, "FULL_MAX_ENTRIES", 1)
    monkeypatch.setattr(jac_module, "DEFAULT_TOP_K", 3)
    top = jacobian_singular_values(model, x, method="auto")
    np.testing.assert_allclose(top, full[:, :3], rtol=1e-8)


def test_top_warns_when_not_converged() -> None:
    torch.manual_seed(0)
    model = _mlp(nn.Tanh, width=40, d_in=40)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        jacobian_singular_values(model, torch.randn(1, 40), k=2, method="top", iters=1)


def test_deep_orthogonal_linear_net_is_isometric() -> None:
    torch.manual_seed(0)
    layers = []
    for _ in range(10):
        lin = nn.Linear(24, 24, bias=False, dtype=torch.float64)
        nn.init.orthogonal_(lin.weight)
        layers.append(lin)
    model = nn.Sequential(*layers)
    s = jacobian_singular_values(model, torch.randn(3, 24))
    np.testing.assert_allclose(s, 1.0, rtol=1e-10)
    summary = isometry_summary(s)
    assert summary.verdict == ISOMETRIC
    assert summary.count == 72 and summary.fraction_in_band == 1.0
    assert summary.condition_number == pytest.approx(1.0, rel=1e-9)
    top = jacobian_singular_values(model, torch.randn(1, 24), k=4, method="top")
    np.testing.assert_allclose(top, 1.0, rtol=1e-10)


def test_deep_tanh_vanishes_with_small_weights_and_explodes_with_large() -> None:
    x = torch.randn(4, 48)
    small = isometry_summary(jacobian_singular_values(_deep_tanh(0.5), x))
    assert small.verdict == VANISHING and small.mean_squared < 1e-3
    large = isometry_summary(jacobian_singular_values(_deep_tanh(4.0), x))
    assert large.verdict == EXPLODING and large.mean_squared > 10


def test_layer_spectra_match_per_layer_autograd() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(3, 6)
    got = layer_jacobian_singular_values(model, x)
    assert list(got) == ["0", "1", "2", "3", "4"]
    acts = x.double()
    model64 = copy.deepcopy(model).double()
    for name, layer in model64.named_children():
        np.testing.assert_allclose(got[name], _reference(layer, acts), rtol=1e-8, atol=1e-12)
        acts = layer(acts).detach()
    np.testing.assert_allclose(
        got["0"],
        torch.linalg.svdvals(model[0].weight.detach().double())[None].expand(3, -1).numpy(),
        rtol=1e-8,
    )
    picked = layer_jacobian_singular_values(model, x, layers=[2, "1"], k=2)
    assert list(picked) == ["1", "2"]
    np.testing.assert_allclose(picked["2"], got["2"][:, :2], rtol=1e-12)
    assert list(layer_jacobian_singular_values(model, x, layers=-1)) == ["4"]


def test_summary_verdicts_and_fields() -> None:
    ill = isometry_summary(np.array([[1.3, 1.0, 0.01, 0.0]]))
    assert isinstance(ill, IsometrySummary)
    assert ill.verdict == ILL_CONDITIONED and ill.condition_number == math.inf
    assert ill.mean_squared == pytest.approx((1.69 + 1 + 1e-4) / 4)
    assert ill.fraction_in_band == 0.5 and ill.max == 1.3 and ill.min == 0.0
    assert isometry_summary(torch.tensor([0.1, 0.2])).verdict == VANISHING
    assert isometry_summary([3.0, 1.0]).verdict == EXPLODING
    assert isometry_summary(np.full(10, 1.0)).verdict == ISOMETRIC


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: jacobian_singular_values(m, torch.randn(4)), "x.unsqueeze"),
        (lambda m: jacobian_singular_values(m, torch.zeros(0, 4)), "non-empty batch"),
        (lambda m: jacobian_singular_values(m, "abc"), "numpy array"),
        (lambda m: jacobian_singular_values(m, torch.ones(2, 4, dtype=torch.bool)), "floating"),
        (lambda m: jacobian_singular_values(m, torch.full((1, 4), math.nan)), "finite"),
        (lambda m: jacobian_singular_values(m, torch.randn(2, 4), method="svd"), "method"),
        (lambda m: jacobian_singular_values(m, torch.randn(2, 4), k=0), "k to be"),
        (lambda m: jacobian_singular_values(m, torch.randn(2, 4), k=4), "k to be"),
        (lambda m: jacobian_singular_values(m, torch.randn(2, 4), k=2.0), "k to be"),
        (lambda m: jacobian_singular_values(m, torch.randn(2, 4), iters=0), "iters"),
        (lambda m: jacobian_singular_values(m, torch.randn(2, 4), tol=-1.0), "tol"),
        (lambda m: jacobian_singular_values(42, torch.randn(2, 4)), "callable"),
        (lambda m: jacobian_singular_values(lambda z: (z,), torch.randn(2, 4)), "tensor"),
        (lambda m: layer_jacobian_singular_values(m[0], torch.randn(2, 4)), "nn.Sequential"),
        (lambda m: layer_jacobian_singular_values(nn.Sequential(), torch.randn(2, 4)), "empty"),
        (lambda m: layer_jacobian_singular_values(m, torch.randn(2, 4), layers=["x"]), "layers"),
        (lambda m: layer_jacobian_singular_values(m, torch.randn(2, 4), layers=[5]), "layers"),
        (lambda m: isometry_summary(np.array([])), "non-empty"),
        (lambda m: isometry_summary(np.array([1.0, -1.0])), "≥ 0"),
        (lambda m: isometry_summary(np.array([1.0, math.inf])), "finite"),
        (lambda m: isometry_summary({"0": np.ones(2)}), "dict"),
    ],
)
def test_bad_input_raises_theory_input_error(call, match: str) -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
    with pytest.raises(TheoryInputError, match=match) as info:
        call(model)
    assert isinstance(info.value, BackprobeError) and "Expected" in str(info.value)


def test_callable_that_rejects_float64_gets_theory_input_error() -> None:
    w = torch.randn(3, 4)  # float32 weights in a closure

    with pytest.raises(TheoryInputError, match="float64"):
        jacobian_singular_values(lambda z: z @ w.T, torch.randn(2, 4))
