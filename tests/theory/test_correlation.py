"""The correlation map and its depth scale ξ_c, against brute-force computations: Monte
Carlo expectations, finite differences, the iterated map, and wide random networks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backprobe.errors import TheoryInputError
from backprobe.theory.correlation import c_map, correlation_depth
from backprobe.theory.meanfield import depth_scale, fixed_point_q, mean_field

S_W4, S_B = math.sqrt(4.0), math.sqrt(0.05)  # Schoenholz et al.'s chaotic example


def test_schoenholz_chaotic_example_trains_to_six_xi_c_not_six_over_ln_chi1() -> None:
    found = correlation_depth("tanh", S_W4, S_B)
    assert 0.0 < found.c_star < 1.0 and found.chi_c < 1.0
    assert found.trainable_depth == pytest.approx(41.9, abs=0.05)
    chaotic = mean_field("tanh", S_W4, S_B)
    assert chaotic.chi1 > 1.0 and chaotic.trainable_depth == pytest.approx(20.4, abs=0.05)


def test_c_map_matches_monte_carlo() -> None:
    q = fixed_point_q("tanh", S_W4, S_B)
    rng = np.random.default_rng(0)
    z1, z2 = rng.standard_normal((2, 2_000_000))
    for c in (-0.5, 0.0, 0.3, 0.9):
        u1 = math.sqrt(q) * z1
        u2 = math.sqrt(q) * (c * z1 + math.sqrt(1 - c * c) * z2)
        brute = (4.0 * float(np.mean(np.tanh(u1) * np.tanh(u2))) + 0.05) / q
        assert c_map(c, "tanh", S_W4, S_B) == pytest.approx(brute, abs=2e-3)
    assert c_map(1.0, "tanh", S_W4, S_B) == pytest.approx(1.0, abs=1e-12)  # c = 1 is fixed


def test_chi_c_is_the_maps_slope_and_the_rate_at_which_c_settles() -> None:
    found = correlation_depth("tanh", S_W4, S_B)
    c_star, h = found.c_star, 1e-5
    assert c_map(c_star, "tanh", S_W4, S_B) == pytest.approx(c_star, abs=1e-12)
    slope = (c_map(c_star + h, "tanh", S_W4, S_B) - c_map(c_star - h, "tanh", S_W4, S_B)) / (2 * h)
    assert slope == pytest.approx(found.chi_c, rel=1e-6)
    # Iterate the map from far away: |c_l − c*| shrinks by χ_c per layer, e every ξ_c.
    c, gaps = 0.95, []
    for _ in range(80):
        c = c_map(c, "tanh", S_W4, S_B)
        gaps.append(abs(c - c_star))
    rate = -1.0 / np.polyfit(np.arange(50, 80), np.log(gaps[50:]), 1)[0]
    assert rate == pytest.approx(found.depth, rel=1e-3)


def test_a_wide_random_network_settles_at_c_star() -> None:
    """Two inputs correlated 0.9 through a 1000-wide tanh net at σ_w² = 4: they first
    decorrelate (c = 1 repels at χ1 > 1), then, from layer 30 on, their pre-activations'
    correlation fluctuates around c*."""
    found = correlation_depth("tanh", S_W4, S_B)
    rng = np.random.default_rng(1)
    width = 1000
    h = rng.standard_normal((2, width))
    h[1] = 0.9 * h[0] + math.sqrt(1 - 0.9**2) * h[1]
    measured = []
    for layer in range(60):
        w = rng.standard_normal((width, width)) * (S_W4 / math.sqrt(width))
        h = np.tanh(h) @ w.T + rng.standard_normal(width) * S_B
        if layer >= 30:
            measured.append(h[0] @ h[1] / np.sqrt((h[0] @ h[0]) * (h[1] @ h[1])))
    assert float(np.mean(measured)) == pytest.approx(found.c_star, abs=0.04)


def test_ordered_phase_xi_c_is_the_gradients_depth_scale() -> None:
    for s2 in (0.8, 1.0, 1.2):
        mf = mean_field("tanh", math.sqrt(s2), S_B)
        found = correlation_depth("tanh", math.sqrt(s2), S_B)
        assert found.c_star == 1.0 and found.chi_c == mf.chi1
        assert found.depth == pytest.approx(depth_scale(mf.chi1), rel=1e-12)


def test_no_finite_fixed_point_and_bad_correlations_are_user_errors() -> None:
    with pytest.raises(TheoryInputError, match="finite, non-zero fixed point"):
        correlation_depth("relu", 2.0, 0.1)  # chaotic ReLU: q* = inf
    with pytest.raises(TheoryInputError, match=r"correlation c in \[-1, 1\]"):
        c_map(1.5, "tanh", 1.0, 0.1)
