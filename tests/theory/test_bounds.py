"""The recurrent bounds against brute force: hand-written recurrences in float64, their
Jacobians dh_T/dh_k taken by autograd, and numpy's SVD as the oracle for norms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from backprobe.errors import BackprobeError
from backprobe.theory.bounds import (
    EXPLODING,
    GATED,
    NEITHER,
    VANISHING,
    TheoryInputError,
    activation_gamma,
    hochreiter_bound,
    jacobian_norms,
    pascanu_regime,
    recurrent_regimes,
    spectral_norm,
)

F64 = torch.float64
ACTIVATIONS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu}
GAMMAS = {"tanh": 1.0, "sigmoid": 0.25, "relu": 1.0}
#: Room for rounding when a measured norm meets its bound (orthogonal W, zero input).
BOUND_RTOL = 1e-9


# ---------------------------------------------------------------- helpers (the oracle)


def svd_norm(M: np.ndarray | torch.Tensor) -> float:
    """Largest singular value by numpy's SVD."""
    return float(np.linalg.svd(np.asarray(M, dtype=np.float64), compute_uv=False)[0])


def recurrent_matrix(rng: np.random.Generator, H: int, lambda1: float, orthogonal: bool):
    """[H, H] float64 with largest singular value ``lambda1``: Gaussian, or orthogonal
    (all singular values equal, so ||W^q|| = lambda1^q and the bound is tight)."""
    A = rng.standard_normal((H, H))
    if orthogonal:
        A, _ = np.linalg.qr(A)
    return torch.from_numpy(A * (lambda1 / svd_norm(A)))


def run(W, U, b, xs, h0, act: str):
    """h_t = σ(W h_(t−1) + U x_t + b) for t = 1..T in float64.

    Returns the states [h_0 … h_T] (h_0 a leaf that requires grad, so every state is in
    the graph) and the pre-activations [T, H]."""
    sigma = ACTIVATIONS[act]
    states = [h0.clone().requires_grad_(True)]
    pre = []
    for x in xs:
        a = W @ states[-1] + U @ x + b
        pre.append(a)
        states.append(sigma(a))
    return states, torch.stack(pre).detach()


def autograd_norms_by_lag(states: list[torch.Tensor]) -> np.ndarray:
    """||dh_T/dh_(T−q)||₂ for q = 0..T from H backward passes through the whole graph:
    pass i gives row i of dh_T/dh_k for every k at once."""
    H = states[-1].shape[0]
    rows = [
        torch.stack(torch.autograd.grad(states[-1][i], states[:-1], retain_graph=True))
        for i in range(H)
    ]
    jac = torch.stack(rows, dim=1)  # [k = 0..T−1, H_out, H_in] = dh_T/dh_k
    by_k = np.linalg.svd(jac.numpy(), compute_uv=False)[:, 0]
    return np.concatenate([[1.0], by_k[::-1]])  # index = lag T − k


def random_problem(seed: int, H: int, T: int, n_in: int = 3, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(H, n_in, generator=g, dtype=F64)
    b = 0.1 * torch.randn(H, generator=g, dtype=F64)
    xs = scale * torch.randn(T, n_in, generator=g, dtype=F64)
    h0 = 0.5 * torch.randn(H, generator=g, dtype=F64)
    return U, b, xs, h0


# ---------------------------------------------------------------- γ and λ1


@pytest.mark.parametrize(
    ("given_as", "gamma"),
    [
        ("tanh", 1.0),
        ("sigmoid", 0.25),
        ("relu", 1.0),
        ("Tanh", 1.0),
        (nn.Tanh(), 1.0),
        (nn.Sigmoid(), 0.25),
        (nn.ReLU(inplace=True), 1.0),
        (nn.Sigmoid, 0.25),
        (torch.tanh, 1.0),
        (torch.sigmoid, 0.25),
        (torch.nn.functional.relu, 1.0),
        (nn.RNN(2, 3, nonlinearity="relu"), 1.0),
        (nn.RNNCell(2, 3), 1.0),
    ],
)
def test_activation_gamma(given_as, gamma):
    assert activation_gamma(given_as) == gamma


@pytest.mark.parametrize("unknown", ["gelu", "", nn.GELU(), nn.LeakyReLU, torch.exp, nn.LSTM(2, 3)])
def test_unknown_activation_is_a_clear_error(unknown):
    with pytest.raises(TheoryInputError, match=r"Expected one of the activations") as err:
        activation_gamma(unknown)
    assert isinstance(err.value, BackprobeError)
    assert "hochreiter_bound" in str(err.value)  # says what to do instead


@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (7, 3), (3, 7), (16, 16)])
def test_spectral_norm_is_numpy_svd(shape):
    A = np.random.default_rng(sum(shape)).standard_normal(shape)
    expected = svd_norm(A)
    assert spectral_norm(A) == pytest.approx(expected, rel=1e-12)
    assert spectral_norm(torch.from_numpy(A)) == pytest.approx(expected, rel=1e-12)
    # float32 weights: the exact norm of the float32 values, computed in float64
    A32 = torch.from_numpy(A).float()
    assert spectral_norm(A32) == pytest.approx(svd_norm(A32.double()), rel=1e-12)
    assert isinstance(spectral_norm(A), float)


def test_spectral_norm_of_a_parameter_that_requires_grad():
    W = nn.Parameter(torch.eye(3) * 2.5)
    assert spectral_norm(W) == pytest.approx(2.5, rel=1e-15)


# ---------------------------------------------------------------- Hochreiter's bound


def test_hochreiter_bound_reproduces_the_reference_numbers():
    # REFERENCES: logistic f'_max = 0.25, ||W|| = 1: 0.25^10 ≈ 9.5e-7, 0.25^20 ≈ 9.1e-13
    W = np.linalg.qr(np.random.default_rng(0).standard_normal((6, 6)))[0]
    bound = hochreiter_bound(W, "sigmoid", [0, 10, 20])
    np.testing.assert_allclose(bound, [1.0, 0.25**10, 0.25**20], rtol=1e-12)
    assert f"{bound[1]:.1e}" == "9.5e-07"
    assert f"{bound[2]:.1e}" == "9.1e-13"


def test_hochreiter_bound_shapes_gamma_forms_and_overflow():
    W = 3.0 * np.eye(2)
    assert hochreiter_bound(W, 1.0, 2).shape == ()
    assert hochreiter_bound(W, nn.Tanh(), np.arange(6).reshape(2, 3)).shape == (2, 3)
    np.testing.assert_allclose(hochreiter_bound(W, 0.5, range(4)), 1.5 ** np.arange(4))
    np.testing.assert_allclose(hochreiter_bound(W, "sigmoid", [1]), [0.75])
    huge = hochreiter_bound(W, 1.0, [100, 1000])
    assert huge[0] == pytest.approx(3.0**100) and huge[1] == np.inf


# ---------------------------------------------------------------- brute force


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "relu"])
@pytest.mark.parametrize(("seed", "H", "lambda1"), [(0, 4, 0.7), (1, 6, 1.3), (2, 3, 2.5)])
def test_jacobian_norms_match_autograd_jacobian_and_respect_the_bound(act, seed, H, lambda1):
    T = 12
    W = recurrent_matrix(np.random.default_rng(seed), H, lambda1 / GAMMAS[act], False)
    U, b, xs, h0 = random_problem(seed, H, T)
    states, pre = run(W, U, b, xs, h0, act)
    # Some units saturate (|a| up to ~12), where autograd's 1 − y² loses relative digits;
    # they carry a negligible share of the norm, so rtol 1e-8 still holds (seen: 1e-14).

    norms = jacobian_norms(W, pre, act)
    bound = hochreiter_bound(W, act, np.arange(T + 1))
    assert norms.shape == (T + 1,) and norms[0] == 1.0
    sigma = ACTIVATIONS[act]
    for k in range(T):
        h_k = states[k].detach()

        def h_T_from_h_k(h, k=k):
            for x in xs[k:]:
                h = sigma(W @ h + U @ x + b)
            return h

        jac = torch.autograd.functional.jacobian(h_T_from_h_k, h_k)  # [H, H]
        measured = svd_norm(jac)
        lag = T - k
        assert norms[lag] == pytest.approx(measured, rel=1e-8, abs=1e-300)
        assert measured <= bound[lag] * (1 + BOUND_RTOL)


def test_the_graph_helper_agrees_with_autograd_functional():
    """The property tests measure with ``autograd_norms_by_lag``; pin it to the oracle."""
    H, T = 5, 9
    W = recurrent_matrix(np.random.default_rng(3), H, 1.2, False)
    U, b, xs, h0 = random_problem(3, H, T)
    states, pre = run(W, U, b, xs, h0, "tanh")
    by_lag = autograd_norms_by_lag(states)

    def h_T_from_h_0(h):
        for x in xs:
            h = torch.tanh(W @ h + U @ x + b)
        return h

    jac = torch.autograd.functional.jacobian(h_T_from_h_0, h0)
    assert by_lag[T] == pytest.approx(svd_norm(jac), rel=1e-12)
    np.testing.assert_allclose(jacobian_norms(W, pre, "tanh"), by_lag, rtol=1e-10)


def test_transposes_matter_and_nn_rnn_cell_convention_is_followed():
    """With PyTorch's own cell, ``weight_hh`` is the W of dh_t/dh_(t−1) = diag(σ') W; its
    transpose (eq. 5's printed Wᵀ read literally) gives other norms."""
    torch.manual_seed(0)
    H, T = 6, 10
    cell = nn.RNNCell(3, H).double()
    xs = torch.randn(T, 3, dtype=F64)
    states = [torch.zeros(H, dtype=F64, requires_grad=True)]
    for x in xs:
        states.append(cell(x, states[-1]))
    W = cell.weight_hh.detach()
    inputs = zip(xs, states[:-1], strict=True)  # a_t from x_t and h_(t−1)
    pre = torch.stack(
        [cell.weight_ih @ x + cell.bias_ih + W @ h + cell.bias_hh for x, h in inputs]
    ).detach()
    measured = autograd_norms_by_lag(states)
    np.testing.assert_allclose(jacobian_norms(W, pre, cell), measured, rtol=1e-10)
    transposed = jacobian_norms(W.T, pre, "tanh")
    assert not np.allclose(transposed[2:], measured[2:], rtol=1e-3)


# ---------------------------------------------------------------- property tests


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    act=st.sampled_from(["tanh", "sigmoid"]),
    H=st.integers(2, 16),
    T=st.integers(1, 100),
    eta=st.floats(0.05, 0.999),
    input_scale=st.floats(0.0, 2.0),
    orthogonal=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_contracting_rnn_gradients_stay_under_eta_to_the_lag(
    act, H, T, eta, input_scale, orthogonal, seed
):
    """λ1 < 1/γ: ||dh_T/dh_k|| ≤ (γ λ1)^(T−k) for every lag, whatever the inputs."""
    gamma = GAMMAS[act]
    W = recurrent_matrix(np.random.default_rng(seed), H, eta / gamma, orthogonal)
    U, b, xs, h0 = random_problem(seed, H, T, scale=input_scale)
    states, pre = run(W, U, b, xs, h0, act)

    measured = autograd_norms_by_lag(states)
    lags = np.arange(T + 1)
    eta_exact = gamma * svd_norm(W)
    assert np.all(measured <= eta_exact**lags * (1 + BOUND_RTOL))
    np.testing.assert_allclose(hochreiter_bound(W, act, lags), eta_exact**lags, rtol=1e-12)
    np.testing.assert_allclose(jacobian_norms(W, pre, act), measured, rtol=1e-7, atol=1e-300)
    assert pascanu_regime(W, act).regime == VANISHING


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(
    act=st.sampled_from(["tanh", "sigmoid"]),
    H=st.integers(2, 16),
    orthogonal=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_large_recurrent_weights_make_gradients_grow_with_lag(act, H, orthogonal, seed):
    """λ1 = 3/γ with tiny inputs (units near the steepest point of σ, not saturated): the
    gradient grows with lag, beyond 1; with orthogonal W at every lag, like 3^lag."""
    gamma, T = GAMMAS[act], 10
    W = recurrent_matrix(np.random.default_rng(seed), H, 3.0 / gamma, orthogonal)
    U, _, xs, _ = random_problem(seed, H, T, scale=1e-9)
    # σ's steepest point as the fixed point: a = 0 at h = σ(0) (0 for tanh, ½ for sigmoid)
    h_star = float(ACTIVATIONS[act](torch.zeros(())))
    h0 = torch.full((H,), h_star, dtype=F64)
    b = -W @ h0
    states, pre = run(W, U, b, xs, h0, act)
    assert pre.abs().max() < 1e-3  # not saturated: σ' within 1e-6 of γ

    measured = autograd_norms_by_lag(states)
    assert np.any(np.diff(measured) > 0)
    assert measured[1] == pytest.approx(3.0, rel=1e-5)  # one step: ||γ W|| = η = 3
    assert measured.max() > 2.9
    if orthogonal:
        assert np.all(np.diff(measured) > 0)
        np.testing.assert_allclose(measured, 3.0 ** np.arange(T + 1), rtol=1e-4)
    assert pascanu_regime(W, act).regime == EXPLODING


# ---------------------------------------------------------------- long products


def test_jacobian_norms_past_float64_range_give_inf_and_zero_not_nan():
    H, T = 4, 1000
    Q = recurrent_matrix(np.random.default_rng(0), H, 1.0, True)
    zeros = np.zeros((T, H))  # tanh'(0) = 1: the product is W^q exactly
    grow = jacobian_norms(3.0 * Q, zeros, "tanh")
    q_max = int(math.log(np.finfo(np.float64).max) / math.log(3.0))  # 646
    np.testing.assert_allclose(grow[: q_max + 1], 3.0 ** np.arange(q_max + 1), rtol=1e-12)
    assert np.all(np.isinf(grow[q_max + 1 :]))
    shrink = jacobian_norms(0.3 * Q, zeros, "tanh")
    np.testing.assert_allclose(shrink[:500], 0.3 ** np.arange(500), rtol=1e-12)
    assert not np.isnan(shrink).any() and shrink[-1] == 0.0


def test_relu_units_all_off_at_one_step_cut_every_longer_lag():
    W = np.eye(3) * 0.9
    pre = np.ones((6, 3))
    pre[2] = -1.0  # a_3: every unit off, so dh_6/dh_k = 0 for k < 3
    norms = jacobian_norms(W, pre, nn.ReLU())
    np.testing.assert_allclose(norms, [1, 0.9, 0.81, 0.729, 0, 0, 0], rtol=1e-12)


# ---------------------------------------------------------------- regimes


@pytest.mark.parametrize(
    ("lambda1", "act", "regime"),
    [
        (0.5, "tanh", VANISHING),
        (1.5, "tanh", EXPLODING),
        (1.0, "tanh", NEITHER),
        (1.0 + 1e-7, "relu", NEITHER),
        (1.0 + 1e-5, "relu", EXPLODING),
        (3.9, "sigmoid", VANISHING),
        (4.0, "sigmoid", NEITHER),
        (4.1, "sigmoid", EXPLODING),
    ],
)
def test_pascanu_regime(lambda1, act, regime):
    W = recurrent_matrix(np.random.default_rng(1), 5, lambda1, True)
    r = pascanu_regime(W, act)
    assert r.regime == regime
    assert r.lambda1 == pytest.approx(lambda1, rel=1e-12)
    assert r.gamma == GAMMAS[act]
    assert r.eta == pytest.approx(GAMMAS[act] * lambda1, rel=1e-12)
    assert r.cell == act and r.weight is None and r.gate_lambda1 == {}
    assert "\n" not in r.explanation and f"{lambda1:.4g}" in r.explanation


def _set_recurrent_weights(module: nn.Module, scales: list[float]) -> list[str]:
    """Each weight_hh a scaled orthogonal matrix; each weight_ih huge (must not be read)."""
    names = [n for n, _ in module.named_parameters() if n.startswith("weight_hh")]
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for name, scale in zip(names, scales, strict=False):
            p = getattr(module, name)
            p.copy_(recurrent_matrix(rng, p.shape[0], scale, True))
        for name, p in module.named_parameters():
            if name.startswith("weight_ih"):
                p.fill_(100.0)
    return names


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_regimes_of_nn_rnn_read_each_weight_hh(nonlinearity, num_layers, bidirectional):
    rnn = nn.RNN(3, 5, num_layers, nonlinearity=nonlinearity, bidirectional=bidirectional)
    scales = [0.5, 1.0, 2.0, 0.9, 1.5, 1.0]
    names = _set_recurrent_weights(rnn, scales)
    regimes = recurrent_regimes(rnn)

    expected_names = [
        f"weight_hh_l{k}{s}"
        for k in range(num_layers)
        for s in ["", "_reverse"][: 1 + bidirectional]
    ]
    assert [r.weight for r in regimes] == expected_names == names
    assert [r.layer for r in regimes] == [int(n[11]) for n in expected_names]
    assert [r.reverse for r in regimes] == [n.endswith("_reverse") for n in expected_names]
    for r, scale in zip(regimes, scales, strict=False):
        assert r.cell == nonlinearity and r.gamma == 1.0
        assert r.lambda1 == pytest.approx(scale, rel=1e-6)
        assert r.regime == {0.5: VANISHING, 0.9: VANISHING, 1.0: NEITHER}.get(scale, EXPLODING)


def test_recurrent_regimes_of_an_rnn_cell():
    cell = nn.RNNCell(3, 4, nonlinearity="relu")
    _set_recurrent_weights(cell, [0.25])
    (r,) = recurrent_regimes(cell)
    assert (r.weight, r.layer, r.reverse, r.cell) == ("weight_hh", 0, False, "relu")
    assert r.regime == VANISHING and r.lambda1 == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("module", "gates", "why"),
    [
        (
            nn.LSTM(3, 4, num_layers=2, bidirectional=True),
            ["input", "forget", "cell", "output"],
            "forget gate",
        ),
        (nn.LSTM(3, 4, proj_size=2), ["input", "forget", "cell", "output"], "forget gate"),
        (nn.GRU(3, 4, num_layers=3), ["reset", "update", "new"], "update gate"),
        (nn.LSTMCell(3, 4), ["input", "forget", "cell", "output"], "forget gate"),
        (nn.GRUCell(3, 4), ["reset", "update", "new"], "update gate"),
    ],
)
def test_gated_cells_are_not_applicable_with_lambda1_per_gate(module, gates, why):
    regimes = recurrent_regimes(module)
    n_weights = sum(1 for n, _ in module.named_parameters() if n.startswith("weight_hh"))
    assert len(regimes) == n_weights
    for r in regimes:
        assert r.regime == GATED
        assert r.lambda1 is None and r.gamma is None and r.eta is None
        assert list(r.gate_lambda1) == gates
        W = getattr(module, r.weight).detach().double().numpy()
        blocks = np.split(W, len(gates), axis=0)
        for gate, block in zip(gates, blocks, strict=True):
            assert r.gate_lambda1[gate] == pytest.approx(svd_norm(block), rel=1e-12)
        assert why in r.explanation and "\n" not in r.explanation


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: spectral_norm(np.ones(3)), "non-empty matrix"),
        (lambda: spectral_norm(np.ones((0, 3))), "non-empty matrix"),
        (lambda: spectral_norm(np.array([[1.0, np.nan]])), "NaN or inf"),
        (lambda: spectral_norm("W"), "non-empty matrix|tensor or numpy array"),
        (lambda: hochreiter_bound(np.ones((3, 2)), 1.0, [1]), "square recurrent matrix"),
        (lambda: hochreiter_bound(np.eye(2), 1.0, [-1]), "non-negative integers"),
        (lambda: hochreiter_bound(np.eye(2), 1.0, [1.5]), "non-negative integers"),
        (lambda: hochreiter_bound(np.eye(2), 0.0, [1]), "positive finite"),
        (lambda: hochreiter_bound(np.eye(2), float("nan"), [1]), "positive finite"),
        (lambda: hochreiter_bound(np.eye(2), "gelu", [1]), "activations"),
        (lambda: pascanu_regime(nn.LSTM(2, 3).weight_hh_l0, "tanh"), "recurrent_regimes"),
        (lambda: pascanu_regime(np.eye(2), "softplus"), "activations"),
        (lambda: jacobian_norms(np.eye(2), np.zeros((5, 3)), "tanh"), r"shape \[T, 2\]"),
        (lambda: jacobian_norms(np.eye(2), np.zeros((5, 4, 2)), "tanh"), "one sequence"),
        (lambda: jacobian_norms(np.eye(2), np.full((5, 2), np.inf), "tanh"), "finite"),
        (lambda: jacobian_norms(np.ones((2, 3)), np.zeros((5, 2)), "tanh"), "square"),
        (lambda: recurrent_regimes(nn.Linear(3, 3)), "pascanu_regime"),
    ],
)
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(TheoryInputError, match=match) as err:
        call()
    assert str(err.value).startswith("Expected")
    assert isinstance(err.value, BackprobeError) and isinstance(err.value, ValueError)
