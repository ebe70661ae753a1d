"""Clipping: norms against plain torch, the three rules, the probe's labelled records,
and the exploding RNN (λ1 = 3) that diverges without clipping and trains with it."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from backprobe.errors import RemedyError
from backprobe.lab.models import RecurrentModel
from backprobe.lab.tasks import adding_task
from backprobe.remedies import (
    AdaptiveClipper,
    clip_grad_norm_,
    clip_grad_value_,
    global_grad_norm,
)


def _model_with_grads(scale: float = 100.0) -> nn.Module:
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    (scale * model(torch.randn(4, 5)).sum()).backward()
    return model


def _plain_norm(model: nn.Module) -> float:
    return float(torch.cat([p.grad.double().flatten() for p in model.parameters()]).norm())


@pytest.mark.parametrize("foreach", [None, True, False])
def test_global_norm_matches_the_norm_of_all_gradients_concatenated(foreach):
    model = _model_with_grads()
    assert float(global_grad_norm(model.parameters(), foreach=foreach)) == pytest.approx(
        _plain_norm(model), rel=1e-6
    )


def test_global_norm_clips_to_the_threshold_and_keeps_the_direction():
    model = _model_with_grads()
    before = torch.cat([p.grad.flatten() for p in model.parameters()])
    result = clip_grad_norm_(model.parameters(), max_norm=1.0)
    after = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert float(result.pre_norm) == pytest.approx(float(before.norm()), rel=1e-6)
    assert float(result.post_norm) == pytest.approx(1.0, rel=1e-5)
    assert float(result.post_norm) == pytest.approx(float(after.norm()), rel=1e-6)
    torch.testing.assert_close(after / after.norm(), before / before.norm())
    assert bool(result.clipped)


@pytest.mark.parametrize("foreach", [True, False])
def test_norm_clipping_reads_each_gradient_once(monkeypatch, foreach):
    """One norm pass: the pre-clip norm is the one torch measures to clip, and the
    post-clip norm follows from it and the factor applied."""
    model = _model_with_grads()
    grads = {p.grad.data_ptr() for p in model.parameters()}
    reads: Counter[int] = Counter()
    foreach_norm, vector_norm = torch._foreach_norm, torch.linalg.vector_norm

    def counting_foreach_norm(tensors, *args, **kwargs):
        reads.update(t.data_ptr() for t in tensors if t.data_ptr() in grads)
        return foreach_norm(tensors, *args, **kwargs)

    def counting_vector_norm(t, *args, **kwargs):
        if t.data_ptr() in grads:
            reads[t.data_ptr()] += 1
        return vector_norm(t, *args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_norm", counting_foreach_norm)
    monkeypatch.setattr(torch.linalg, "vector_norm", counting_vector_norm)
    result = clip_grad_norm_(model.parameters(), max_norm=1.0, foreach=foreach)
    monkeypatch.undo()
    assert reads == Counter(dict.fromkeys(grads, 1))
    assert float(result.post_norm) == pytest.approx(_plain_norm(model), rel=1e-6)


def test_float64_gradients_give_float32_norms():
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    (100.0 * model(torch.randn(4, 5, dtype=torch.float64)).sum()).backward()
    before = _plain_norm(model)
    result = clip_grad_norm_(model.parameters(), max_norm=1.0)
    assert result.pre_norm.dtype == result.post_norm.dtype == torch.float32
    assert float(result.pre_norm) == pytest.approx(before, rel=1e-6)
    assert float(result.post_norm) == pytest.approx(_plain_norm(model), rel=1e-6)


def test_a_small_gradient_is_left_alone():
    model = _model_with_grads(scale=1e-3)
    before = [p.grad.clone() for p in model.parameters()]
    result = clip_grad_norm_(model.parameters(), max_norm=1.0)
    assert not bool(result.clipped)
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.grad, b)


def test_value_clipping_clamps_elements():
    model = _model_with_grads()
    result = clip_grad_value_(model.parameters(), 0.5)
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert float(grads.abs().max()) == pytest.approx(0.5)
    assert float(result.post_norm) == pytest.approx(float(grads.norm()), rel=1e-6)
    assert float(result.pre_norm) > float(result.post_norm)


def test_adaptive_threshold_is_a_multiple_of_the_running_mean():
    w = nn.Parameter(torch.zeros(3))
    clipper = AdaptiveClipper(factor=2.0, beta=0.5, warmup=2)
    norms = [1.0, 3.0, 2.0, 50.0, 2.0]
    posts, thresholds = [], []
    for n in norms:
        w.grad = torch.tensor([n, 0.0, 0.0])
        r = clipper([w])
        posts.append(float(r.post_norm))
        thresholds.append(float(r.threshold))
    # reference: EMA with bias correction over post-clip norms, beta 0.5
    ema, expected_t, expected_p = 0.0, [], []
    for k, n in enumerate(norms):
        t = math.inf if k < 2 else 2.0 * ema / (1 - 0.5**k)
        post = min(n, t)
        ema = 0.5 * ema + 0.5 * post
        expected_t.append(t)
        expected_p.append(post)
    assert thresholds == pytest.approx(expected_t, rel=1e-5)
    assert posts == pytest.approx(expected_p, rel=1e-5)
    assert posts[3] < 10  # the spike is clipped …
    assert thresholds[4] < 10  # … and does not raise the next threshold


def test_the_probe_records_pre_and_post_norms(make_probe):
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    probe = make_probe(model, every=1)
    expected = []
    with probe:
        for scale in (0.01, 100.0, 1000.0):
            (scale * model(torch.randn(4, 5)).sum()).backward()
            r = clip_grad_norm_(model.parameters(), 1.0, probe=probe)
            expected.append((float(r.pre_norm), float(r.post_norm)))
            probe.step()
            model.zero_grad()
    pre, post = probe.history("clip/pre_norm"), probe.history("clip/post_norm")
    np.testing.assert_allclose(pre, [e[0] for e in expected], rtol=1e-6)
    np.testing.assert_allclose(post, [e[1] for e in expected], rtol=1e-6)
    assert post[0] == pre[0] and post[1] == pytest.approx(1.0, rel=1e-5)


def test_errors():
    with pytest.raises(RemedyError, match="max_norm > 0"):
        clip_grad_norm_([], 0.0)
    with pytest.raises(RemedyError, match="record_scalar"):
        clip_grad_norm_(_model_with_grads().parameters(), 1.0, probe=object())
    with pytest.raises(RemedyError, match="beta"):
        AdaptiveClipper(beta=1.0)


def _train_exploding_rnn(make_probe, clip: bool, steps: int = 60):
    """A tanh RNN with W_hh at largest singular value λ1 = 3 (> 1/γ = 1: exploding is
    possible) on the adding problem, T = 50, SGD lr 0.1, batch 20, probed every step."""
    torch.manual_seed(0)
    model = RecurrentModel(2, 32, 1, cell="rnn", recurrent_norm=3.0)
    task = adding_task(20 * steps, 50, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # time profiles only at step 0: they cost T backward passes per recorded step (and
    # the through-time measurement does not yet survive non-finite states)
    probe = make_probe(model, every=1, time_every=10**9)
    with probe:
        for s in range(steps):
            x, y = task.x[20 * s : 20 * (s + 1)], task.y[20 * s : 20 * (s + 1)]
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            if clip:
                clip_grad_norm_(model.parameters(), 1.0, probe=probe)
            probe.step(loss)
            opt.step()
            opt.zero_grad()
    return probe


def test_exploding_rnn_diverges_without_clipping_and_trains_with_it(make_probe):
    free = _train_exploding_rnn(make_probe, clip=False)
    clipped = _train_exploding_rnn(make_probe, clip=True)
    # without: the loss goes non-finite (the probe counts non-finite values too)
    assert not np.all(np.isfinite(free.history("loss")))
    assert np.nansum(free.history("nonfinite")) > 0
    # with: every recorded value finite, the loss falls, and clipping did act
    loss = clipped.history("loss")
    assert np.all(np.isfinite(loss)) and np.nansum(clipped.history("nonfinite")) == 0
    assert loss[-10:].mean() < 0.5 * loss[:5].mean(), loss
    pre = clipped.history("clip/pre_norm")
    assert np.all(np.isfinite(pre)) and pre.max() > 10.0
    np.testing.assert_allclose(clipped.history("clip/post_norm"), np.minimum(pre, 1.0), rtol=1e-4)
