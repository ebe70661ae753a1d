"""Mean-field theory (backprobe.theory.meanfield) against torch's activations, closed forms,
Monte Carlo, and the back-propagated gradients of real wide tanh networks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backprobe.errors import BackprobeError
from backprobe.theory.meanfield import (
    ACTIVATIONS,
    FixedPointError,
    MeanField,
    MeanFieldActivation,
    TheoryInputError,
    activation_names,
    chi1,
    depth_scale,
    edge_of_chaos_sigma_w,
    fixed_point_q,
    gaussian_expectation,
    mean_field,
    predicted_gradient_ratio,
    q_map,
    regime,
    resolve_activation,
    trainable_depth,
)

#: torch's own activations, an implementation independent of the module's numpy formulas.
TORCH = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "linear": lambda x: x * 1.0,
    "erf": torch.erf,
    "gelu": F.gelu,
    "silu": F.silu,
    "elu": F.elu,
    "softplus": lambda x: F.softplus(x, threshold=50.0),  # default 20 cuts off at 2e-9
}

SQRT_005 = math.sqrt(0.05)


def torch_phi_dphi(name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """φ(x) and φ'(x) from torch and its autograd, float64."""
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = TORCH[name](t)
    (grad,) = torch.autograd.grad(y.sum(), t)
    return y.detach().numpy(), grad.numpy()


# ----------------------------------------------------------------------- activations


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_formulas_match_torch_and_autograd(name: str) -> None:
    x = np.concatenate((np.linspace(-40.0, 40.0, 4001), [0.0, 1e-300, -1e-300]))
    phi, dphi = torch_phi_dphi(name, x)
    act = ACTIVATIONS[name]
    np.testing.assert_allclose(act.phi(x), phi, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(act.dphi(x), dphi, rtol=1e-13, atol=1e-15)


def test_names_aliases_torch_objects_and_unknown_names() -> None:
    assert resolve_activation("Swish") is ACTIVATIONS["silu"]
    assert resolve_activation(" TANH ") is ACTIVATIONS["tanh"]
    assert set(activation_names()) >= {"tanh", "sigmoid", "relu", "linear", "erf", "gelu"}
    assert {"silu", "swish", "elu", "softplus"} <= set(activation_names())
    for obj, name in [
        (nn.Tanh(), "tanh"),
        (nn.GELU, "gelu"),
        (nn.ReLU(inplace=True), "relu"),
        (torch.tanh, "tanh"),
        (F.silu, "silu"),
        (torch.special.expit, "sigmoid"),
        (nn.Identity(), "linear"),
    ]:
        assert resolve_activation(obj) is ACTIVATIONS[name]
    with pytest.raises(TheoryInputError, match=r"one of elu, erf, gelu.*but got 'mish'"):
        resolve_activation("mish")
    with pytest.raises(TheoryInputError, match=r"approximate='none'"):
        resolve_activation(nn.GELU(approximate="tanh"))
    with pytest.raises(TheoryInputError, match=r"alpha=1\.0"):
        mean_field(nn.ELU(alpha=0.5), 1.0, 0.1)
    with pytest.raises(TheoryInputError, match="pair"):
        resolve_activation(42)
    assert issubclass(TheoryInputError, BackprobeError)
    assert issubclass(FixedPointError, TheoryInputError)


def test_a_user_pair_of_functions_numpy_or_torch_gives_the_builtin_answer() -> None:
    tanh = mean_field("tanh", 1.4, 0.3)
    numpy_pair = (np.tanh, lambda x: 1.0 / np.cosh(x) ** 2)
    torch_pair = (torch.tanh, lambda t: 1.0 - torch.tanh(t) ** 2)  # refuse numpy arrays
    for pair in (numpy_pair, torch_pair):
        mine = mean_field(pair, 1.4, 0.3)
        assert mine.q_star == pytest.approx(tanh.q_star, rel=1e-13)
        assert mine.chi1 == pytest.approx(tanh.chi1, rel=1e-13)
    # a leaky ReLU by quadrature, and declared positively homogeneous (closed forms)
    leaky = (lambda x: np.where(x > 0, x, 0.1 * x), lambda x: np.where(x > 0, 1.0, 0.1))
    moment = (1 + 0.01) / 2
    closed = MeanFieldActivation("leaky", *leaky, homogeneous=(moment, moment))
    for activation in (leaky, closed):
        assert q_map(2.0, activation, 1.2, 0.1) == pytest.approx(1.44 * moment * 2 + 0.01)
        assert fixed_point_q(activation, 1.2, 0.1) == pytest.approx(0.01 / (1 - 1.44 * moment))
        assert chi1(activation, 1.2, 0.1) == pytest.approx(1.44 * moment, rel=1e-13)


def test_bad_user_functions_fail_at_once_with_the_reason() -> None:
    with pytest.raises(TheoryInputError, match="element-wise"):
        resolve_activation((lambda x: np.sum(x), np.cos))  # a reduction, not element-wise
    with pytest.raises(TheoryInputError, match="finite"), np.errstate(divide="ignore"):
        resolve_activation((np.tanh, lambda x: 1.0 / x))  # inf at 0
    with pytest.raises(TheoryInputError, match="failed with"):
        resolve_activation((np.tanh, lambda x: x.no_such_method()))
    # a tensor method fails on numpy arrays and works through torch
    assert resolve_activation((np.tanh, lambda t: 1 - t.tanh() ** 2)).dphi(np.zeros(2))[0] == 1


# ------------------------------------------------------------------------ quadrature


@pytest.mark.parametrize("q", [1e-6, 0.3, 1.0, 7.0, 1e3, 1e8])
def test_gaussian_moments_and_erf_closed_forms_are_exact(q: float) -> None:
    def rel(a: float, b: float) -> float:
        return abs(a - b) / abs(b)

    assert rel(gaussian_expectation(lambda x: x**2, q), q) < 1e-14
    assert rel(gaussian_expectation(lambda x: x**6, q), 15 * q**3) < 1e-13
    if q < 10:  # the rule is built for activations, not for oscillations at large q
        assert rel(gaussian_expectation(np.cos, q), math.exp(-q / 2)) < 1e-13
    erf = ACTIVATIONS["erf"]
    # E[erf(√q z)²] = (2/π) arcsin(2q / (1 + 2q)),  E[erf'(√q z)²] = (4/π) / √(1 + 4q)
    second = 2 / math.pi * math.asin(2 * q / (1 + 2 * q))
    assert rel(gaussian_expectation(lambda x: erf.phi(x) ** 2, q), second) < 1e-13
    slope2 = 4 / math.pi / math.sqrt(1 + 4 * q)
    assert rel(gaussian_expectation(lambda x: erf.dphi(x) ** 2, q), slope2) < 1e-13


def test_gauss_hermite_is_fine_at_small_q_and_loses_digits_where_documented() -> None:
    dtanh2 = lambda x: (1.0 - np.tanh(x) ** 2) ** 2  # noqa: E731
    for q in (0.05, 0.5, 1.0):
        assert gaussian_expectation(dtanh2, q, n=200) == pytest.approx(
            gaussian_expectation(dtanh2, q), rel=1e-10
        )
    hermite, split = gaussian_expectation(dtanh2, 10.0, n=200), gaussian_expectation(dtanh2, 10.0)
    assert 1e-5 < abs(hermite / split - 1) < 1e-2  # the docstring's 2e-4 (absolute) at q = 10
    # a kink at 0: algebraic convergence for ELU, and an odd n sits on ReLU's step
    delu2 = lambda x: ACTIVATIONS["elu"].dphi(x) ** 2  # noqa: E731
    assert abs(gaussian_expectation(delu2, 1.0, n=300) - gaussian_expectation(delu2, 1.0)) > 1e-4
    step2 = lambda x: ACTIVATIONS["relu"].dphi(x) ** 2  # noqa: E731
    assert gaussian_expectation(step2, 1.0) == pytest.approx(0.5, abs=1e-15)
    assert gaussian_expectation(step2, 1.0, n=4) == pytest.approx(0.5, abs=1e-15)
    assert gaussian_expectation(step2, 1.0, n=5) == pytest.approx(0.2333333, abs=1e-6)


def test_gaussian_expectation_edges_and_bad_input() -> None:
    assert gaussian_expectation(np.cos, 0.0) == 1.0
    assert gaussian_expectation(lambda x: 2.0, 3.0) == pytest.approx(2.0, rel=1e-15)  # constant
    assert gaussian_expectation(lambda x: np.tanh(x) ** 2, math.inf) == 1.0
    assert gaussian_expectation(lambda x: np.maximum(x, 0) ** 2, math.inf) == math.inf
    with pytest.raises(TheoryInputError, match="a variance, to be ≥ 0"):
        gaussian_expectation(np.cos, -1.0)
    with pytest.raises(TheoryInputError, match="≥ 0"):
        gaussian_expectation(np.cos, math.nan)
    for n in (0, 400, 2.5):
        with pytest.raises(TheoryInputError, match="Gauss–Hermite nodes"):
            gaussian_expectation(np.cos, 1.0, n=n)
    with pytest.raises(TheoryInputError, match="element-wise"):
        gaussian_expectation(lambda x: x[:2], 1.0)
    with pytest.raises(TheoryInputError, match="NaN"):
        gaussian_expectation(lambda x: np.log(x), 1.0)


# --------------------------------------------------------------------- Monte Carlo

MC_SAMPLES = 2_000_000


@pytest.fixture(scope="module")
def normal_samples() -> dict[str, torch.Tensor]:
    """Plain and stratified N(0, 1) samples, float64, from numpy's RNG."""
    rng = np.random.default_rng(20170101)
    plain = rng.standard_normal(2 * MC_SAMPLES)
    # stratified: one uniform in each of n equal slices of (0, 1), mapped through Φ⁻¹
    u = (np.arange(MC_SAMPLES) + rng.random(MC_SAMPLES)) / MC_SAMPLES
    u = np.clip(u, 1e-300, np.nextafter(1.0, 0.0))
    stratified = torch.special.ndtri(torch.from_numpy(u))
    return {"plain": torch.from_numpy(plain), "stratified": stratified}


def mc_moments(name: str, q: float, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-sample φ(√q z)², φ'(√q z)², and φ φ' z/√q (for the map's slope), via torch."""
    x = (math.sqrt(q) * z).requires_grad_(True)
    y = TORCH[name](x)
    (dy,) = torch.autograd.grad(y.sum(), x)
    y = y.detach()
    return y * y, dy * dy, y * dy * z / math.sqrt(q)


def mc_fixed_point(name: str, sigma_w: float, sigma_b: float, z: torch.Tensor) -> float:
    """The fixed point of the Monte Carlo q-map from q = 1: Newton's steps where the map
    contracts, plain steps elsewhere."""
    q, s2w, s2b = 1.0, sigma_w**2, sigma_b**2
    for _ in range(50):
        phi2, _, slope = mc_moments(name, q, z)
        mapped, map_slope = s2w * phi2.mean().item() + s2b, s2w * slope.mean().item()
        if abs(mapped - q) < 1e-13 * q:
            break
        q = q + (mapped - q) / (1.0 - map_slope) if map_slope < 1 else mapped
    return q


MC_CASES = [
    ("tanh", 1.0, 0.3),
    ("tanh", math.sqrt(1.76), SQRT_005),
    ("tanh", 2.5, 1.0),
    ("sigmoid", 1.0, 0.1),
    ("sigmoid", 4.0, 0.5),
    ("sigmoid", 12.0, 1.0),
    ("erf", 1.2, 0.2),
    ("erf", 2.0, 0.5),
]


@pytest.mark.parametrize(("name", "sigma_w", "sigma_b"), MC_CASES)
def test_fixed_point_and_chi1_match_monte_carlo(
    name: str, sigma_w: float, sigma_b: float, normal_samples: dict[str, torch.Tensor]
) -> None:
    q_star = fixed_point_q(name, sigma_w, sigma_b)
    chi = chi1(name, sigma_w, sigma_b)
    # stratified Monte Carlo: the fixed point of its own q-map, and χ1 there
    z = normal_samples["stratified"]
    q_mc = mc_fixed_point(name, sigma_w, sigma_b, z)
    chi_mc = sigma_w**2 * mc_moments(name, q_mc, z)[1].mean().item()
    assert q_mc == pytest.approx(q_star, rel=1e-3)
    assert chi_mc == pytest.approx(chi, rel=1e-3)
    # plain Monte Carlo at q*: the q-map returns q*, and χ1, within 5 standard errors (of
    # 4e6 samples: up to 1e-3 relative for the narrow φ'² at large q, too noisy for 1e-3)
    phi2, dphi2, _ = mc_moments(name, q_star, normal_samples["plain"])
    for samples, expected in ((sigma_w**2 * phi2 + sigma_b**2, q_star), (sigma_w**2 * dphi2, chi)):
        mean, se = samples.mean().item(), samples.std().item() / math.sqrt(samples.numel())
        assert se < 2e-3 * expected
        assert abs(mean - expected) < 5 * se


def test_erf_fixed_point_matches_its_closed_form_map() -> None:
    for sigma_w, sigma_b in [(0.7, 0.4), (1.3, 0.1), (3.0, 2.0)]:
        q = 1.0
        for _ in range(5000):  # the exact map, iterated
            q = sigma_w**2 * 2 / math.pi * math.asin(2 * q / (1 + 2 * q)) + sigma_b**2
        assert fixed_point_q("erf", sigma_w, sigma_b) == pytest.approx(q, rel=1e-12)
        expected_chi = sigma_w**2 * 4 / math.pi / math.sqrt(1 + 4 * q)
        assert chi1("erf", sigma_w, sigma_b) == pytest.approx(expected_chi, rel=1e-12)


@pytest.mark.parametrize("name", ["relu", "linear"])
def test_relu_and_linear_closed_forms_match_quadrature_and_monte_carlo(
    name: str, normal_samples: dict[str, torch.Tensor]
) -> None:
    act = ACTIVATIONS[name]
    half = 0.5 if name == "relu" else 1.0
    z = normal_samples["stratified"]
    for q, sigma_w, sigma_b in [(0.3, 1.0, 0.5), (2.0, math.sqrt(2.0), 0.1), (50.0, 0.7, 0.0)]:
        closed = sigma_w**2 * half * q + sigma_b**2
        assert q_map(q, name, sigma_w, sigma_b) == pytest.approx(closed, rel=1e-15)
        quad = sigma_w**2 * gaussian_expectation(lambda x: act.phi(x) ** 2, q) + sigma_b**2
        assert quad == pytest.approx(closed, rel=1e-13)
        phi2, dphi2, _ = mc_moments(name, q, z)
        assert sigma_w**2 * phi2.mean().item() + sigma_b**2 == pytest.approx(closed, rel=1e-3)
        assert chi1(name, sigma_w, sigma_b) == sigma_w**2 * half
        assert sigma_w**2 * gaussian_expectation(lambda x: act.dphi(x) ** 2, q) == pytest.approx(
            sigma_w**2 * half, rel=1e-13
        )
        assert sigma_w**2 * dphi2.mean().item() == pytest.approx(sigma_w**2 * half, rel=1e-3)


def test_homogeneous_fixed_points_including_none_finite() -> None:
    assert fixed_point_q("relu", 1.0, 0.5) == pytest.approx(0.25 / (1 - 0.5), rel=1e-15)
    assert fixed_point_q("linear", 0.5, 1.0) == pytest.approx(1 / (1 - 0.25), rel=1e-15)
    assert fixed_point_q("relu", 1.0, 0.0) == 0.0
    # He init is critical for gradients, but with biases the variance grows by σ_b² a layer
    assert fixed_point_q("relu", math.sqrt(2.0), 0.1) == math.inf
    assert fixed_point_q("relu", math.sqrt(2.0), 0.0, q0=3.0) == 3.0  # every q is fixed
    assert fixed_point_q("relu", 2.0, 0.0, q0=1.0) == math.inf
    assert fixed_point_q("relu", 2.0, 0.0, q0=0.0) == 0.0  # unstable, but fixed
    assert fixed_point_q("linear", 1.1, 0.0) == math.inf
    he = mean_field("relu", math.sqrt(2.0), 0.1)
    assert (he.q_star, he.regime) == (math.inf, "critical")
    assert he.chi1 == pytest.approx(1.0, abs=1e-15) and he.depth_scale > 1e15
    assert mean_field("relu", 2.0, 0.1).regime == "chaotic/exploding"


# -------------------------------------------------------------------- fixed points


def test_fixed_point_is_a_fixed_point_for_every_activation() -> None:
    for name in sorted(ACTIVATIONS):
        for sigma_w, sigma_b in [(0.8, 0.2), (1.3, 0.5), (1.1, 1.0)]:
            if name == "linear" and sigma_w >= 1:
                continue  # q grows without bound
            q = fixed_point_q(name, sigma_w, sigma_b)
            assert math.isfinite(q)
            assert q_map(q, name, sigma_w, sigma_b) == pytest.approx(q, rel=1e-12, abs=1e-12)


def test_marginal_and_degenerate_fixed_points() -> None:
    # σ_b = 0 and φ(0) = 0: the signal dies exactly below the edge, and slowly at it
    assert fixed_point_q("tanh", 0.9, 0.0) == 0.0
    assert fixed_point_q("tanh", 1.0, 0.0) == 0.0  # q ~ 1/(2l): the plain map is very slow
    q = fixed_point_q("tanh", 1.01, 0.0)  # q* ≈ (σ_w² − 1)/2, slope ≈ 0.98
    assert q == pytest.approx((1.01**2 - 1) / 2, rel=0.02)
    assert q_map(q, "tanh", 1.01, 0.0) == pytest.approx(q, rel=1e-12)
    # softplus near σ_w² = 2: q* is huge and the map's slope within 1e-6 of 1
    sigma_w = math.sqrt(2 * (1 - 1e-6))
    q = fixed_point_q("softplus", sigma_w, 0.5)
    assert 1e5 < q < math.inf
    assert q_map(q, "softplus", sigma_w, 0.5) == pytest.approx(q, rel=1e-9)
    # unbounded activations past σ_w² = 2 have no finite fixed point; χ1 takes the limit
    for name in ("gelu", "silu", "elu", "softplus"):
        field = mean_field(name, 1.6, 0.3)
        assert field.q_star == math.inf
        assert field.chi1 == pytest.approx(1.6**2 / 2, rel=1e-14)
        assert field.regime == "chaotic/exploding"
    with pytest.raises(FixedPointError, match="max_iter=4"):
        fixed_point_q("tanh", 1.0, 0.0, max_iter=4)


def test_fixed_point_bad_input() -> None:
    for kwargs, match in [
        ({"sigma_w": -1.0}, "sigma_w, a standard deviation"),
        ({"sigma_b": math.nan}, "sigma_b"),
        ({"sigma_w": math.inf}, "finite"),
        ({"q0": -0.1}, "q0, a variance"),
        ({"q0": math.inf}, "finite q0"),
        ({"tol": 0.0}, "tol > 0"),
        ({"max_iter": 1}, "max_iter"),
        ({"max_iter": 10.0}, "max_iter"),
    ]:
        args = {"activation": "tanh", "sigma_w": 1.0, "sigma_b": 0.1, **kwargs}
        with pytest.raises(TheoryInputError, match=match):
            fixed_point_q(**args)
    with pytest.raises(TheoryInputError, match="q, a variance"):
        q_map(-1.0, "tanh", 1.0, 0.1)
    with pytest.raises(TheoryInputError, match="sigma_w to be a number"):
        q_map(1.0, "tanh", "wide", 0.1)
    with pytest.raises(TheoryInputError, match="q_star"):
        chi1("tanh", 1.0, 0.1, q_star=-2.0)


# ------------------------------------------------------------------ edge of chaos


def test_documented_example_tanh_edge_of_chaos_near_sigma_w2_1_76() -> None:
    sigma_w = edge_of_chaos_sigma_w("tanh", SQRT_005)
    assert sigma_w**2 == pytest.approx(1.76, abs=0.02)
    assert chi1("tanh", sigma_w, SQRT_005) == pytest.approx(1.0, abs=1e-9)
    field = mean_field("tanh", sigma_w, SQRT_005)
    assert field.regime == "critical"
    assert field.depth_scale > 1e6 and field.trainable_depth > 6e6
    assert mean_field("tanh", 1.0, SQRT_005).regime == "ordered/vanishing"
    assert mean_field("tanh", 1.5, SQRT_005).regime == "chaotic/exploding"


def test_edge_of_chaos_closed_forms_and_tangential_crossings() -> None:
    assert edge_of_chaos_sigma_w("relu", 0.3) == pytest.approx(math.sqrt(2.0), rel=1e-15)
    assert edge_of_chaos_sigma_w("linear", 0.3) == 1.0
    # σ_b = 0: q* = 0 below the edge, where χ1 = σ_w² φ'(0)²
    assert edge_of_chaos_sigma_w("tanh", 0.0) == pytest.approx(1.0, rel=1e-5)
    assert edge_of_chaos_sigma_w("erf", 0.0) == pytest.approx(math.sqrt(math.pi) / 2, rel=1e-5)
    assert edge_of_chaos_sigma_w("softplus", 0.5) == pytest.approx(math.sqrt(2.0), rel=1e-9)
    for name, sigma_b in [("sigmoid", 0.5), ("gelu", 1.0), ("elu", 0.1), ("erf", 1.0)]:
        sigma_w = edge_of_chaos_sigma_w(name, sigma_b)
        assert chi1(name, sigma_w, sigma_b) == pytest.approx(1.0, abs=1e-9)
        assert chi1(name, 0.99 * sigma_w, sigma_b) < 1 < chi1(name, 1.01 * sigma_w, sigma_b)


def test_edge_of_chaos_errors() -> None:
    with pytest.raises(TheoryInputError, match=r"jumps from 0\.58.* to 1\.17"):
        edge_of_chaos_sigma_w("gelu", 0.0)  # q* goes from 0 straight to inf
    tiny = (lambda x: 1e-6 * x, lambda x: np.full_like(x, 1e-6))
    with pytest.raises(TheoryInputError, match="stays ordered"):
        edge_of_chaos_sigma_w(tiny, 0.1)
    with pytest.raises(TheoryInputError, match="low end"):
        edge_of_chaos_sigma_w("tanh", 0.1, sigma_w_range=(5.0, 10.0))
    with pytest.raises(TheoryInputError, match="sigma_w_range"):
        edge_of_chaos_sigma_w("tanh", 0.1, sigma_w_range=(2.0, 1.0))
    with pytest.raises(TheoryInputError, match="sigma_b"):
        edge_of_chaos_sigma_w("tanh", -0.1)


# ------------------------------------------------------------- depth and ratios


def test_depth_scale_ratio_and_trainable_depth() -> None:
    assert depth_scale(1.0) == math.inf
    assert depth_scale(math.exp(-1)) == pytest.approx(1.0, rel=1e-15)
    assert depth_scale(0.5) == pytest.approx(1 / math.log(2), rel=1e-15)
    assert depth_scale(2.0) == pytest.approx(1 / math.log(2), rel=1e-15)  # growth, same scale
    assert depth_scale(0.0) == 0.0 and depth_scale(math.inf) == 0.0
    assert trainable_depth(math.exp(-1)) == pytest.approx(6.0, rel=1e-15)
    assert trainable_depth(1.0) == math.inf
    assert trainable_depth(0.5, factor=1.0) == depth_scale(0.5)
    assert predicted_gradient_ratio(0.5, 10) == 2.0**-10
    assert predicted_gradient_ratio(1.0, 10_000) == 1.0
    assert predicted_gradient_ratio(0.0, 0) == 1.0
    assert predicted_gradient_ratio(2.0, 5000) == math.inf
    assert predicted_gradient_ratio(0.5, 5000) == 0.0
    assert predicted_gradient_ratio(0.9, 2.5) == pytest.approx(0.9**2.5, rel=1e-15)
    assert regime(0.9995) == "critical" and regime(0.9995, critical_tol=1e-4) != "critical"
    for bad in (-0.1, math.nan):
        with pytest.raises(TheoryInputError, match="chi1 ≥ 0"):
            depth_scale(bad)
        with pytest.raises(TheoryInputError, match="chi1 ≥ 0"):
            predicted_gradient_ratio(bad, 3)
    for bad in (-1, math.inf, math.nan):
        with pytest.raises(TheoryInputError, match="depth, a number of layers"):
            predicted_gradient_ratio(0.5, bad)


def test_mean_field_summary() -> None:
    field = mean_field("sigmoid", 1.0, 0.1)
    assert isinstance(field, MeanField)
    assert field.regime == "ordered/vanishing" and field.chi1 < 0.1  # deep sigmoid nets
    assert field.gradient_ratio(10) == pytest.approx(field.chi1**10, rel=1e-14)
    assert field.trainable_depth == pytest.approx(6 * field.depth_scale)
    text = str(field)
    assert "sigmoid" in text and "ordered/vanishing" in text and "shrinks by e every" in text
    assert "keeps its size" in str(mean_field("linear", 1.0, 0.0))


# ------------------------------------------- against the gradients of a real network

WIDTH, DEPTH, BATCH, SEEDS = 500, 25, 16, (0, 1, 2)


def measured_log_ratios(
    sigma_w: float, sigma_b: float, q_star: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A wide tanh MLP (nn.Linear, float64) fed pre-activations h^0 ~ N(0, q*), so every
    layer sits at the fixed point; loss = random linear readout of the last layer.

    Returns [DEPTH] ln(E[(dL/dh^l)²] / E[(dL/dh^{l+1})²]) (means over units and batch)
    and [DEPTH] mean squares of h^1 … h^DEPTH.
    """
    g = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(DEPTH):
        linear = nn.Linear(WIDTH, WIDTH, dtype=torch.float64).requires_grad_(False)
        linear.weight.normal_(0.0, sigma_w / math.sqrt(WIDTH), generator=g)
        linear.bias.normal_(0.0, sigma_b, generator=g)
        layers.append(linear)
    h = torch.randn(BATCH, WIDTH, generator=g, dtype=torch.float64) * math.sqrt(q_star)
    h.requires_grad_(True)
    pre = [h]
    for linear in layers:
        h = linear(torch.tanh(h))
        h.retain_grad()
        pre.append(h)
    readout = torch.randn(WIDTH, generator=g, dtype=torch.float64)
    (h @ readout).sum().backward()
    grad_ms = torch.stack([p.grad.pow(2).mean() for p in pre])
    q_measured = torch.stack([p.detach().pow(2).mean() for p in pre[1:]])
    return torch.log(grad_ms[:-1] / grad_ms[1:]).numpy(), q_measured.numpy()


@pytest.mark.parametrize(
    ("sigma_w2", "sigma_b2", "phase"),
    [
        (1.2, 0.05, "ordered/vanishing"),
        (1.5, 0.3, "ordered/vanishing"),
        (2.5, 0.05, "chaotic/exploding"),
        (4.0, 0.2, "chaotic/exploding"),
    ],
)
def test_chi1_predicts_the_gradients_of_a_wide_tanh_network(
    sigma_w2: float, sigma_b2: float, phase: str
) -> None:
    sigma_w, sigma_b = math.sqrt(sigma_w2), math.sqrt(sigma_b2)
    field = mean_field("tanh", sigma_w, sigma_b)
    assert field.regime == phase
    runs = [measured_log_ratios(sigma_w, sigma_b, field.q_star, seed) for seed in SEEDS]
    log_ratios = np.stack([r[0] for r in runs])
    measured_chi = math.exp(log_ratios.mean())
    assert measured_chi == pytest.approx(field.chi1, rel=0.05)
    # and the forward pass stays at q*
    assert np.mean([r[1].mean() for r in runs]) == pytest.approx(field.q_star, rel=0.03)


def test_a_hugging_face_activation_module_is_its_builtin() -> None:
    activations = pytest.importorskip("transformers.activations")
    assert resolve_activation(activations.GELUActivation()) is ACTIVATIONS["gelu"]
    assert resolve_activation(activations.SiLUActivation()) is ACTIVATIONS["silu"]
    with pytest.raises(TheoryInputError, match="pair"):  # the tanh approximation has no form
        resolve_activation(activations.NewGELUActivation())
