"""Echo state network: the reservoir's spectral radius and leaky update against a plain
loop, the ridge readout against numpy's least squares, batching and chunking that change
nothing, a gradient-trained readout, feedback, Mackey-Glass, and the benchmark's quick mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backprobe.errors import RemedyError
from backprobe.lab.tasks import mackey_glass
from backprobe.remedies import EchoStateNetwork

ROOT = Path(__file__).resolve().parents[2]


def _mg(n: int = 1200) -> torch.Tensor:
    x = mackey_glass(n)
    return (2 * (x - x.min()) / (x.max() - x.min()) - 1).float().unsqueeze(-1)  # [T, 1]


def test_reservoir_is_sparse_at_the_spectral_radius_and_seeded():
    esn = EchoStateNetwork(3, 200, 2, spectral_radius=0.9, connectivity=0.05, seed=1)
    radius = torch.linalg.eigvals(esn.W.double()).abs().max()
    assert float(radius) == pytest.approx(0.9, rel=1e-5)
    assert float((esn.W != 0).double().mean()) == pytest.approx(0.05, abs=0.01)
    assert set(esn.W_in.unique().tolist()) <= {-1.0, 0.0, 1.0}
    same = EchoStateNetwork(3, 200, 2, spectral_radius=0.9, connectivity=0.05, seed=1)
    assert torch.equal(esn.W, same.W) and torch.equal(esn.W_in, same.W_in)


def test_states_follow_the_leaky_update():
    esn = EchoStateNetwork(2, 30, 1, leak=0.4, bias_scaling=0.5, seed=0, dtype=torch.float64)
    u = torch.randn(15, 3, 2, dtype=torch.float64)
    h = torch.zeros(3, 30, dtype=torch.float64)
    expected = []
    for t in range(15):
        h = 0.6 * h + 0.4 * torch.tanh(u[t] @ esn.W_in.T + h @ esn.W.T + esn.bias)
        expected.append(h)
    torch.testing.assert_close(esn.states(u), torch.stack(expected))
    # batch_first gives the same states, transposed; unbatched the same as a batch of one
    bf = EchoStateNetwork(2, 30, 1, leak=0.4, bias_scaling=0.5, seed=0, dtype=torch.float64)
    bf.batch_first = True
    torch.testing.assert_close(bf.states(u.transpose(0, 1)), torch.stack(expected).transpose(0, 1))
    torch.testing.assert_close(esn.states(u[:, 0]), torch.stack(expected)[:, 0])


def test_ridge_readout_matches_numpy_least_squares_with_a_free_bias():
    esn = EchoStateNetwork(1, 50, 2, seed=0, dtype=torch.float64)
    u = torch.randn(300, 2, 1, dtype=torch.float64)
    y = torch.randn(300, 2, 2, dtype=torch.float64)
    ridge, warmup = 1e-3, 20
    esn.fit(u, y, warmup=warmup, ridge=ridge)
    s = esn.states(u)[warmup:].reshape(-1, 50).numpy()
    t = y[warmup:].reshape(-1, 2).numpy()
    # augmented least squares: [S 1; √ridge·I 0] [W; b] = [T; 0]  (bias unpenalised)
    a = np.block([[s, np.ones((len(s), 1))], [np.sqrt(ridge) * np.eye(50), np.zeros((50, 1))]])
    rhs = np.vstack([t, np.zeros((50, 2))])
    sol = np.linalg.lstsq(a, rhs, rcond=None)[0]
    np.testing.assert_allclose(
        esn.readout.weight.detach().numpy(), sol[:50].T, rtol=1e-6, atol=1e-9
    )
    np.testing.assert_allclose(esn.readout.bias.detach().numpy(), sol[50], rtol=1e-6, atol=1e-9)


def test_chunked_float32_fit_equals_one_pass_and_continues_the_state():
    u = torch.randn(500, 4, 1)
    y = torch.randn(500, 4, 1)
    a = EchoStateNetwork(1, 60, 1, seed=3).fit(u, y, warmup=50)
    b = EchoStateNetwork(1, 60, 1, seed=3).fit(u, y, warmup=50, chunk=37)
    torch.testing.assert_close(a.readout.weight, b.readout.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.last_state, a.states(u)[-1])
    # continuing from last_state equals running the concatenated series
    more = torch.randn(30, 4, 1)
    torch.testing.assert_close(
        a.states(more, state=a.last_state), a.states(torch.cat([u, more]))[500:]
    )


def test_mackey_glass_one_step_forecast():
    x = _mg()
    esn = EchoStateNetwork(1, 100, 1, spectral_radius=1.25, leak=0.3, ridge=1e-6, seed=0)
    esn.fit(x[:999], x[1:1000], warmup=100)
    with torch.no_grad():
        pred = esn(x[999:-1], state=esn.last_state)
    rmse = float((pred - x[1000:]).pow(2).mean().sqrt())
    assert rmse < 1e-2  # on a series of range 2; the benchmark reports ≈ 3e-3


def test_readout_can_be_trained_by_gradient():
    x = _mg(700)
    esn = EchoStateNetwork(1, 100, 1, spectral_radius=1.25, leak=0.3, seed=0)
    states = esn.states(x[:-1])[100:]  # fixed features, computed once
    target = x[1:][100:]
    opt = torch.optim.Adam(esn.readout.parameters(), lr=1e-2)
    first = None
    for _ in range(300):
        loss = torch.nn.functional.mse_loss(esn.readout(states), target)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05 * first
    assert esn.W.grad is None and not esn.W.requires_grad  # the reservoir stays fixed


def test_feedback_teacher_forcing_and_free_running():
    x = _mg(900)
    esn = EchoStateNetwork(
        1,
        100,
        1,
        spectral_radius=1.1,
        leak=0.3,
        feedback=True,
        feedback_scaling=0.5,
        ridge=1e-7,
        seed=0,
    )
    esn.fit(x[:-1], x[1:], warmup=100)
    with torch.no_grad():
        forced = esn(x[:-1], teacher=x[1:])
        free = esn(x[:-1])
    # teacher forcing is what fit saw: good one-step forecasts; the free run feeds its own
    # (slightly wrong) outputs back and must stay close for one step ahead too
    assert float((forced[100:] - x[1:][100:]).abs().mean()) < 2e-2
    assert float((free[100:] - x[1:][100:]).abs().mean()) < 5e-2
    no_fb = EchoStateNetwork(1, 100, 1, spectral_radius=1.1, leak=0.3, seed=0)
    assert not torch.equal(no_fb.states(x[:50]), esn.states(x[:50], teacher=x[1:51]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    esn = EchoStateNetwork(1, 64, 1, seed=0, dtype=torch.float64)
    u, y = torch.randn(200, 2, 1, dtype=torch.float64), torch.randn(200, 2, 1, dtype=torch.float64)
    cpu = esn.fit(u, y, warmup=10)(u)
    gpu = esn.cuda().fit(u.cuda(), y.cuda(), warmup=10)(u.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu)


def test_errors():
    with pytest.raises(RemedyError, match="leak"):
        EchoStateNetwork(1, 10, 1, leak=0.0)
    esn = EchoStateNetwork(1, 10, 1, seed=0)
    with pytest.raises(RemedyError, match=r"\[T, B, 1\]"):
        esn(torch.randn(5, 2, 3))
    with pytest.raises(RemedyError, match="warmup"):
        esn.fit(torch.randn(5, 1), torch.randn(5, 1), warmup=5)
    with pytest.raises(RemedyError, match="one target per input step"):
        esn.fit(torch.randn(5, 2, 1), torch.randn(4, 2, 1))


def test_benchmark_quick_mode_prints_both_libraries():
    pytest.importorskip("reservoirpy")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "esn_vs_reservoirpy.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == [
        "backprobe",
        "reservoirpy",
        "backprobe / reservoirpy",
    ]
