"""memory_decay against brute-force Jacobians (torch.autograd.functional.jacobian) of
the steps it claims to differentiate, for every cell, and through the probe for stacked,
bidirectional and projected layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.testing import assert_allclose
from torch import nn

import backprobe as bp
from backprobe.probe.decay import memory_decay
from backprobe.probe.recurrent import cell_step, layer_params, unrolled_forward

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _params(mode: str, n_in: int, hidden: int, proj: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    h_out = proj or hidden
    G = GATES[mode] * hidden

    def draw(*shape, scale=0.6):
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64)

    return {
        "weight_ih": draw(G, n_in),
        "weight_hh": draw(G, h_out, scale=1.2 / h_out**0.5),
        "bias_ih": draw(G, scale=0.3),
        "bias_hh": draw(G, scale=0.3),
        "weight_hr": draw(proj, hidden) if proj else None,
    }


def _step(mode, p, x_t, state):
    gi = F.linear(x_t, p["weight_ih"], p["bias_ih"])
    return cell_step(mode, gi, state, p)[0]


def _brute(mode, p, x, h0, c0) -> np.ndarray:
    """||ds_end/ds_k||₂ for every k by jacobian of the steps after k, float64."""
    states = [(h0, c0)]
    for t in range(x.shape[0]):
        states.append(_step(mode, p, x[t : t + 1], states[-1]))
    T = x.shape[0]
    norms = []
    for lag in range(T):
        k = T - 1 - lag
        h_k, c_k = states[k + 1]
        if mode == "LSTM":
            # h_k follows c_k through the output gate (and the projection)
            pre = F.linear(x[k : k + 1], p["weight_ih"], p["bias_ih"])
            pre = pre + F.linear(states[k][0], p["weight_hh"], p["bias_hh"])
            o_k = torch.sigmoid(pre.chunk(4, dim=-1)[3])

            def run(c, k=k, o_k=o_k):
                h = o_k * torch.tanh(c)
                h = h if p["weight_hr"] is None else F.linear(h, p["weight_hr"])
                state = (h, c)
                for t in range(k + 1, T):
                    state = _step(mode, p, x[t : t + 1], state)
                return state[1]

            J = torch.autograd.functional.jacobian(run, c_k)[0, :, 0, :]
        else:

            def run(h, k=k):
                state = (h, None)
                for t in range(k + 1, T):
                    state = _step(mode, p, x[t : t + 1], state)
                return state[0]

            J = torch.autograd.functional.jacobian(run, h_k)[0, :, 0, :]
        norms.append(torch.linalg.matrix_norm(J, ord=2).item())
    return np.array(norms)


@pytest.mark.parametrize(
    ("mode", "proj"),
    [("RNN_TANH", 0), ("RNN_RELU", 0), ("GRU", 0), ("LSTM", 0), ("LSTM", 3)],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_memory_decay_equals_the_brute_force_jacobian_norms(mode, proj, seed):
    n_in, hidden, T = 3, 5, 9
    p = _params(mode, n_in, hidden, proj, seed)
    x = torch.randn(
        T, n_in, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64
    )
    h0 = 0.3 * torch.ones(1, proj or hidden, dtype=torch.float64)
    c0 = -0.2 * torch.ones(1, hidden, dtype=torch.float64) if mode == "LSTM" else None
    hs, cs, state = [], [], (h0, c0)
    for t in range(T):
        state = _step(mode, p, x[t : t + 1], state)
        hs.append(state[0])
        cs.append(state[1])
    h = torch.cat(hs)
    c = torch.cat(cs) if mode == "LSTM" else None
    h_prev = torch.cat([h0, h[:-1]])
    c_prev = None if c is None else torch.cat([c0, c[:-1]])
    eye = torch.eye(hidden if mode == "LSTM" else proj or hidden, dtype=torch.float64)
    measured = memory_decay(mode, p, x, h_prev, h, c_prev, c, eye).numpy()
    assert_allclose(measured, _brute(mode, p, x, h0, c0), rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize(
    "module",
    [
        nn.GRU(3, 5, num_layers=2, bidirectional=True),
        nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2),
        nn.RNN(3, 4, num_layers=2, nonlinearity="relu"),
    ],
    ids=["gru", "lstm-proj", "relu-rnn"],
)
def test_the_probe_decay_of_every_sub_layer_is_that_of_its_own_steps(module):
    """Each sub-layer's decay holds its input (the layer below's output) fixed: brute
    force over that layer's steps, on the first sequence, with the layer's own weights."""
    torch.manual_seed(3)
    module = module.double()
    x = torch.randn(7, 4, 3, dtype=torch.float64)  # [T, B, H_in]
    probe = bp.Probe(module, db=None, time_batch=2)
    with probe:
        out, _ = module(x)
        loss = out.square().sum()
        loss.backward()
        probe.step(loss)
    with torch.no_grad():
        twin = unrolled_forward(module, x[:, :1])
    n_dirs = 2 if module.bidirectional else 1
    mode = module.mode
    for c, name in enumerate(probe.recurrent_layers):
        layer, direction = divmod(c, n_dirs)
        below = (
            x[:, 0]
            if layer == 0
            else torch.cat([torch.cat(twin.states[layer - 1][d]) for d in range(n_dirs)], dim=-1)
        )
        p = layer_params(module, layer, direction == 1)
        p = {k: None if v is None else v.detach() for k, v in p.items()}
        steps = below.flip(0) if direction == 1 else below
        h0 = torch.zeros(1, module.proj_size or module.hidden_size, dtype=torch.float64)
        c0 = torch.zeros(1, module.hidden_size, dtype=torch.float64) if mode == "LSTM" else None
        assert_allclose(
            probe.jacobian_decay(name)[0], _brute(mode, p, steps, h0, c0), rtol=1e-6, err_msg=name
        )


def test_random_directions_of_wide_layers_leave_the_users_random_stream_alone():
    """Above 64 units the decay draws 16 random directions: from a generator of its own,
    so that dropout masks and shuffling after a recorded step do not move."""
    torch.manual_seed(4)
    rnn = nn.RNN(3, 80, batch_first=True)
    probe = bp.Probe(rnn, db=None)
    x = torch.randn(2, 6, 3)
    with probe:
        out, _ = rnn(x)
        loss = out.square().sum()
        loss.backward()
        before = torch.get_rng_state()
        probe.step(loss)
        assert torch.equal(torch.get_rng_state(), before)
    assert np.isfinite(probe.jacobian_decay(probe.recurrent_layers[0])[0]).all()
