"""Pascanu's Ω: value and gradient against a brute-force reference built from full
one-step Jacobian matrices, and its effect on a vanishing tanh RNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from backprobe.errors import RemedyError
from backprobe.lab.models import RecurrentModel
from backprobe.lab.tasks import temporal_order_task
from backprobe.probe.recurrent import unrolled_forward
from backprobe.remedies import clip_grad_norm_, omega_terms, pascanu_omega


def _reference_omega(rnn: nn.RNN, head: nn.Linear, x: torch.Tensor, y: torch.Tensor):
    """Ω by the letter of eq. 9: a plain loop for h_t, dE/dh_{k+1} from autograd (then a
    constant), and ∂h_{k+1}/∂h_k as the full [H, H] Jacobian matrix of one step, per sample,
    built with torch.autograd.functional.jacobian(create_graph=True)."""
    w_ih, w_hh, b_ih, b_hh = rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0

    def step(x_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh)

    h = x.new_zeros(x.shape[1], rnn.hidden_size)
    hs = []
    for t in range(x.shape[0]):
        h = step(x[t], h)
        hs.append(h)
    loss = nn.functional.mse_loss(head(hs[-1]), y)
    grads = torch.autograd.grad(loss, hs, retain_graph=True, allow_unused=True)
    omega = x.new_zeros(())
    for k in range(len(hs) - 1):
        g = grads[k + 1]
        if g is None:
            continue
        g = g.detach()
        per_sample = []
        for b in range(x.shape[1]):
            jac = jacobian(lambda hk, b=b, k=k: step(x[k + 1, b], hk), hs[k][b], create_graph=True)
            back = g[b] @ jac  # [H] = g · ∂h_{k+1}/∂h_k
            per_sample.append((back.norm() / g[b].norm() - 1.0) ** 2)
        omega = omega + torch.stack(per_sample).mean()
    return loss, omega


@pytest.mark.parametrize("scale", [0.3, 1.5])
def test_omega_value_and_gradient_match_the_brute_force_reference(scale):
    torch.manual_seed(0)
    rnn, head = nn.RNN(3, 5).double(), nn.Linear(5, 2).double()
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(scale)
    x, y = torch.randn(7, 4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    params = [*rnn.parameters(), *head.parameters()]

    result = unrolled_forward(rnn, x)
    loss = nn.functional.mse_loss(head(result.output[-1]), y)
    omega = pascanu_omega(loss, result)
    ours = torch.autograd.grad(omega, params, allow_unused=True)

    ref_loss, ref_omega = _reference_omega(rnn, head, x, y)
    theirs = torch.autograd.grad(ref_omega, params, allow_unused=True)

    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(omega, ref_omega)
    assert omega > 1e-3  # not a trivially zero regulariser
    for a, b in zip(ours, theirs, strict=True):
        if b is None:
            assert a is None or a.abs().max() == 0
        else:
            torch.testing.assert_close(a, b)
    # Ω reaches W_rec: its gradient there is non-zero, and the head's is zero (dE/dh held
    # constant, so the readout does not enter Ω)
    assert ours[1].abs().max() > 1e-6
    assert ours[4] is None or ours[4].abs().max() == 0


def test_steps_with_a_negligible_error_are_skipped():
    torch.manual_seed(0)
    rnn = nn.RNN(1, 4)
    result = unrolled_forward(rnn, torch.randn(5, 2, 1))
    loss = 0.0 * result.output.sum() + 1e-12 * result.output[-1].sum()
    terms = omega_terms(loss, [h for h in result.states[0][0]])
    assert terms.shape == (4, 2)
    assert torch.all(terms == 0)  # ‖dE/dh‖² = 4·1e-24 < 1e-20 everywhere


def test_bidirectional_and_stacked_layers_are_all_regularised():
    torch.manual_seed(0)
    rnn = nn.GRU(2, 4, num_layers=2, bidirectional=True)
    result = unrolled_forward(rnn, torch.randn(6, 3, 2))
    loss = result.output.pow(2).mean()
    both = pascanu_omega(loss, result)
    first = pascanu_omega(loss, result, layers=[0])
    second = pascanu_omega(loss, result, layers=[1])
    torch.testing.assert_close(both, first + second)
    assert first > 0 and second > 0


def test_errors_say_what_to_pass():
    torch.manual_seed(0)
    result = unrolled_forward(nn.RNN(1, 2), torch.randn(3, 1, 1))
    with pytest.raises(RemedyError, match="unrolled_forward"):
        pascanu_omega(result.output.sum(), result.output)  # type: ignore[arg-type]
    with pytest.raises(RemedyError, match="layer indices"):
        pascanu_omega(result.output.sum(), result, layers=[3])
    with pytest.raises(RemedyError, match="at least 2"):
        omega_terms(result.output.sum(), result.states[0][0][:1])


def _time_ratio(make_probe, model, x, y) -> float:
    """||dE/dh_0|| / ||dE/dh_T|| of the model's tanh RNN, measured by the probe's time
    profile on one batch."""
    probe = make_probe(model)
    with probe:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        probe.step(loss)
    model.zero_grad()
    profile = probe.time_profile("rnn")[0]
    return float(profile[0] / profile[-1])


def _temporal_order(make_probe, alpha: float, length: int, steps: int):
    """Pascanu et al. §4.1's set-up, smaller: 50 tanh units started vanishing (λ1 = 0.5),
    SGD lr 0.1, batch 20, clipping at 1, one-hot inputs; Ω weight ``alpha`` (0: plain).
    Returns the time ratio before and after training, the accuracy on 1000 fresh
    sequences, and the losses the probe recorded."""
    torch.manual_seed(0)
    task = temporal_order_task(20 * steps, length, seed=0)
    fresh = temporal_order_task(1000, length, seed=1)
    x = nn.functional.one_hot(task.x, 6).float()
    x_fresh = nn.functional.one_hot(fresh.x, 6).float()
    model = RecurrentModel(6, 50, 4, cell="rnn", recurrent_norm=0.5)
    before = _time_ratio(make_probe, model, x_fresh[:20], fresh.y[:20])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = make_probe(model, time_every=lambda step: False)  # records the loss
    with probe:
        for s in range(steps):
            xb, yb = x[20 * s : 20 * (s + 1)], task.y[20 * s : 20 * (s + 1)]
            if alpha > 0:
                out, unrolled = model.forward_unrolled(xb)
                loss = nn.functional.cross_entropy(out, yb)
                (loss + alpha * pascanu_omega(loss, unrolled)).backward()
            else:
                loss = nn.functional.cross_entropy(model(xb), yb)
                loss.backward()
            clip_grad_norm_(model.parameters(), 1.0)
            probe.step(loss)
            opt.step()
            opt.zero_grad()
    after = _time_ratio(make_probe, model, x_fresh[:20], fresh.y[:20])
    with torch.no_grad():
        accuracy = float((model(x_fresh).argmax(-1) == fresh.y).float().mean())
    return before, after, accuracy, probe.history("loss")


def _check_omega_helps(make_probe, length: int, steps: int) -> None:
    plain = _temporal_order(make_probe, 0.0, length, steps)
    omega = _temporal_order(make_probe, 2.0, length, steps)
    assert plain[0] == omega[0] < 1e-8  # the same vanishing start
    # Ω lifts the ratio ||dE/dh_0|| / ||dE/dh_T|| by orders of magnitude; plain SGD not
    assert omega[1] > 1e-3 and omega[1] > 1e6 * plain[1]
    # and solves the task, where plain SGD stays at chance (1/4) and at the ln 4 loss
    assert omega[2] >= 0.99 and plain[2] < 0.35
    assert omega[3][-20:].mean() < 0.5 and plain[3][-20:].mean() > 1.3


def test_omega_raises_the_time_ratio_and_solves_temporal_order_quick(make_probe):
    # 400 steps, not fewer: at 300 the Ω run is still climbing (82 % or 100 % accuracy
    # depending on the CPU's kernels); at 400 it is at 100 % with every kernel tried.
    _check_omega_helps(make_probe, length=20, steps=400)


@pytest.mark.slow
def test_omega_solves_temporal_order_where_plain_sgd_fails(make_probe):
    _check_omega_helps(make_probe, length=30, steps=2000)
