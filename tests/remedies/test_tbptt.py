"""Truncated BPTT: updates and gradients against hand-written references for k1 = k2 and
k2 > k1; nn.RNN/LSTM/GRU and a user module; and the memory it saves, measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from backprobe.errors import RemedyError
from backprobe.lab.tasks import mackey_glass
from backprobe.remedies import SavedTensorMeter, clip_grad_norm_, detach_state, truncated_bptt


class Forecaster(nn.Module):
    """A user module returning (output, state): a recurrent core and a readout per step."""

    def __init__(self, cell: type[nn.RNNBase] = nn.RNN, hidden: int = 16, batch_first=False):
        super().__init__()
        self.core = cell(1, hidden, batch_first=batch_first)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, state=None):
        h, state = self.core(x, state)
        return self.out(h), state


def _series(batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-step-ahead Mackey-Glass windows: inputs and targets [T, B, 1], centred."""
    x = mackey_glass(length + batch * 7 + 1).float()
    x = (x - 0.9) / 0.3
    windows = torch.stack([x[7 * b : 7 * b + length + 1] for b in range(batch)], dim=1)
    return windows[:-1].unsqueeze(-1), windows[1:].unsqueeze(-1)


def _grads_per_update(model, x, y, k1, k2):
    """Run truncated_bptt with lr = 0 and record the gradients of every update."""
    grads = []
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    truncated_bptt(
        model,
        x,
        y,
        nn.functional.mse_loss,
        opt,
        k1=k1,
        k2=k2,
        clip=lambda ps: grads.append([p.grad.clone() for p in ps]),
    )
    return grads


def _reference_grads(model, x, y, k1, k2):
    """By the definition: update j uses the loss of steps [(j−1)k1, jk1) and back-propagates
    from step jk1 − k2, whose state is reached without gradient from the start."""
    grads = []
    length = x.shape[0]
    for j in range(1, -(-length // k1) + 1):
        start, first, end = max(0, j * k1 - k2), (j - 1) * k1, min(j * k1, length)
        with torch.no_grad():
            state = model(x[:start], None)[1] if start > 0 else None
        out, _ = model(x[start:end], state)
        loss = nn.functional.mse_loss(out[first - start :], y[first:end])
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    return grads


@pytest.mark.parametrize(("k1", "k2", "length"), [(5, 5, 20), (4, 10, 22), (3, 7, 10)])
@pytest.mark.parametrize("cell", [nn.RNN, nn.LSTM, nn.GRU])
def test_gradients_match_the_definition(k1, k2, length, cell):
    torch.manual_seed(0)
    model = Forecaster(cell).double()
    x, y = (t.double() for t in _series(3, length))
    ours = _grads_per_update(model, x, y, k1, k2)
    ref = _reference_grads(model, x, y, k1, k2)
    assert len(ours) == len(ref) == -(-length // k1)
    for a, b in zip(ours, ref, strict=True):
        for ga, gb in zip(a, b, strict=True):
            torch.testing.assert_close(ga, gb)


def test_k1_equal_k2_is_the_usual_detached_chunk_loop():
    """Same losses and same parameters after training as the loop users write by hand."""
    torch.manual_seed(0)
    ours, ref = Forecaster(nn.LSTM), Forecaster(nn.LSTM)
    ref.load_state_dict(ours.state_dict())
    x, y = _series(4, 60)
    result = truncated_bptt(
        ours, x, y, nn.functional.mse_loss, torch.optim.SGD(ours.parameters(), lr=0.1), k1=15
    )
    opt, state, losses = torch.optim.SGD(ref.parameters(), lr=0.1), None, []
    for a in range(0, 60, 15):
        out, state = ref(x[a : a + 15], state)
        loss = nn.functional.mse_loss(out, y[a : a + 15])
        loss.backward()
        opt.step()
        opt.zero_grad()
        state = detach_state(state)
        losses.append(loss.item())
    assert result.losses == pytest.approx(losses, rel=1e-5)
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert all(not s.requires_grad for s in result.state)  # (h, c), detached


def test_batch_first_and_a_bare_recurrent_module():
    torch.manual_seed(0)
    model = Forecaster(nn.GRU, batch_first=True)
    x, y = (t.transpose(0, 1) for t in _series(2, 30))  # [B, T, 1]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    result = truncated_bptt(model, x, y, nn.functional.mse_loss, opt, k1=10, time_dim=1)
    assert result.updates == 3 and result.state.shape == (1, 2, 16)
    rnn = nn.RNN(1, 4)
    xs = torch.randn(12, 2, 1)
    result = truncated_bptt(
        rnn,
        xs,
        torch.zeros(12, 2, 4),
        nn.functional.mse_loss,
        torch.optim.SGD(rnn.parameters()),
        k1=5,
    )
    assert result.updates == 3  # 5 + 5 + a last chunk of 2


def test_errors():
    rnn = nn.RNN(1, 4)
    opt = torch.optim.SGD(rnn.parameters(), lr=0.1)
    x = torch.randn(10, 2, 1)
    with pytest.raises(RemedyError, match="k1 <= k2"):
        truncated_bptt(rnn, x, x, nn.functional.mse_loss, opt, k1=5, k2=3)
    with pytest.raises(RemedyError, match="same 10 steps"):
        truncated_bptt(rnn, x, x[:5], nn.functional.mse_loss, opt, k1=5)
    with pytest.raises(RemedyError, match=r"\(output, state\)"):
        truncated_bptt(lambda x, state: rnn(x, state)[0], x, x, nn.functional.mse_loss, opt, k1=5)


def test_meter_counts_each_storage_once_and_releases_it():
    w = torch.randn(50, 50, requires_grad=True)
    with SavedTensorMeter() as meter:
        h = torch.zeros(4, 50)
        for _ in range(10):
            h = torch.tanh(h @ w)  # saves h and w (once: shared) and tanh's output
    assert meter.peak_bytes == 50 * 50 * 4 + 10 * 4 * 50 * 4 + 4 * 50 * 4
    h.sum().backward()
    assert meter.current_bytes == 0
    with SavedTensorMeter(ignore=[w]) as meter:
        torch.tanh(torch.zeros(4, 50) @ w).sum()
    assert meter.peak_bytes == 2 * 4 * 50 * 4  # the input and tanh's output, not w


def test_truncated_bptt_trains_10x_longer_sequences_in_the_same_memory(make_probe):
    """Budget: the peak memory of full BPTT on sequences of T = 40 (saved activations).
    Full BPTT on T = 400 needs about 10× that; truncated BPTT(40, 40) on T = 400 stays
    within the budget and the loss it records on the probe falls."""
    torch.manual_seed(0)
    model = Forecaster(nn.GRU, hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    short_x, short_y = _series(16, 40)
    long_x, long_y = _series(16, 400)

    def full(x, y):
        out, _ = model(x)
        nn.functional.mse_loss(out, y).backward()
        model.zero_grad()

    # data and parameters live anyway: the meter counts the activations the graph keeps
    lives_anyway = [short_x, short_y, long_x, long_y, *model.parameters()]
    with SavedTensorMeter(ignore=lives_anyway) as meter:
        full(short_x, short_y)
    budget = meter.peak_bytes
    with SavedTensorMeter(ignore=lives_anyway) as meter:
        full(long_x, long_y)
    assert meter.peak_bytes > 9 * budget

    # the probe records the loss; its through-time replays (which build graphs of their
    # own) are switched off, so that the meter sees the training graph only
    probe = make_probe(model, every=1, time_every=lambda step: False)
    with probe, SavedTensorMeter(ignore=lives_anyway) as meter:
        for _ in range(3):  # three passes over the long sequences, 10 updates each
            truncated_bptt(model, long_x, long_y, nn.functional.mse_loss, opt, k1=40, probe=probe)
    assert meter.peak_bytes <= budget
    loss = probe.history("loss")
    assert len(loss) == 30
    assert loss[-5:].mean() < 0.2 * loss[:5].mean(), loss
    assert np.all(np.isfinite(loss))


def test_clipping_inside_truncated_bptt_is_recorded_on_the_same_step(make_probe):
    torch.manual_seed(0)
    model = Forecaster(nn.RNN)
    x, y = _series(2, 30)
    probe = make_probe(model, every=1, time_every=lambda step: False)
    with probe:
        result = truncated_bptt(
            model,
            x,
            y,
            nn.functional.mse_loss,
            torch.optim.SGD(model.parameters(), lr=0.01),
            k1=10,
            clip=lambda ps: clip_grad_norm_(ps, 0.01, probe=probe),
            probe=probe,
        )
    pre, post = probe.history("clip/pre_norm"), probe.history("clip/post_norm")
    assert len(pre) == result.updates == 3
    assert np.all(pre > 0.01) and np.allclose(post, 0.01, rtol=1e-4)
    np.testing.assert_allclose(probe.history("loss"), result.losses, rtol=1e-6)
