"""The zoo's architectures build, run and learn from their batch as their sources define."""

from __future__ import annotations

import math

import pytest
import torch

from .architectures import ARCHITECTURES, VOCAB, loss_of

pytest.importorskip("transformers")


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_builds_the_same_weights_and_starts_near_chance(name: str) -> None:
    arch = ARCHITECTURES[name]
    first, second = arch.build(), arch.build()
    for (n, p), (_, q) in zip(first.named_parameters(), second.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    first.eval()
    with torch.no_grad():
        loss = float(loss_of(first, arch.batch(0), arch.loss_fn))
    # cross-entropy near ln(classes) at random init: over 64 tokens, or 4 / 10 classes
    assert 0.5 * math.log(4) < loss < 2 * math.log(VOCAB), loss


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_parameter_that_runs_gets_a_finite_gradient(name: str) -> None:
    arch = ARCHITECTURES[name]
    model = arch.build()
    loss_of(model, arch.batch(0), arch.loss_fn).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) >= 0.9 * len(list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
