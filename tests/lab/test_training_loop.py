"""The lab's one training loop: what it records, when, and how a divergence is stored."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backprobe.lab.experiments import RunContext
from backprobe.lab.experiments.table import collect
from backprobe.lab.experiments.training import Loop, build_optimizer, train
from backprobe.lab.models import RecurrentModel
from backprobe.store.run import open_run


def _ctx(db, name: str = "unit") -> RunContext:  # type: ignore[no-untyped-def]
    return RunContext(name, "v", 0, db, "inv", "quick", {"steps": 0})


def _batches(n: int = 12, poison_at: int | None = None):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n + 1, 8, 3, generator=g)
    ys = xs.sum(-1, keepdim=True)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = ys[step].clone()
        if poison_at is not None and step >= poison_at:
            y[0] = math.inf  # the loss becomes inf: a diverged run
        return xs[step], y

    return batch


def test_evaluations_are_stored_and_the_max_norm_is_a_running_max(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    calls: list[int] = []

    def evaluate() -> dict[str, float]:
        calls.append(1)
        return {"test_mse": float(len(calls))}

    opt = build_optimizer("sgd", model.parameters(), 0.1, 0.0)
    loop = Loop(steps=10, eval_every=4, record_every=3, clip=0.5)
    m = train(model, _ctx(tmp_path / "r.db"), loop, opt, _batches(), F.mse_loss, evaluate)
    assert len(calls) == 4  # steps 0, 4, 8 and the last, 9
    run = open_run(tmp_path / "r.db", 1)
    assert list(run.steps) == [0, 3, 4, 6, 8, 9]  # record_every, eval_every and the last
    mse = run.history("test_mse")
    assert list(mse[~np.isnan(mse)]) == [1.0, 2.0, 3.0, 4.0]
    pre = run.history("clip/pre_norm")
    assert np.all(np.diff(run.history("max_grad_norm")) >= 0)
    assert m["max_grad_norm"] >= np.nanmax(pre) and m["diverged"] == 0.0
    assert np.allclose(run.history("clip/post_norm"), np.minimum(pre, 0.5), rtol=1e-4)
    assert m["test_mse"] == 4.0


def test_a_diverged_run_stores_its_post_mortem(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 1))
    before: list[torch.Tensor] = []

    def evaluate() -> dict[str, float]:
        before.append(model[0].weight.detach().clone())
        return {"test_mse": 0.5}

    opt = build_optimizer("sgd", model.parameters(), 0.01, 0.0)
    loop = Loop(steps=10, eval_every=100, record_every=100)  # records step 0 and 9 only
    m = train(
        model, _ctx(tmp_path / "r.db"), loop, opt, _batches(poison_at=5), F.mse_loss, evaluate
    )
    assert m["diverged"] == 1.0
    run = open_run(tmp_path / "r.db", 1)
    assert list(run.steps) == [0, 6]  # the step after the divergence, recorded anyway
    assert run.history("diverged")[-1] == 1.0 and math.isinf(run.history("loss")[-1])
    assert torch.equal(before[-1], model[0].weight)  # the inf step made no update
    (stored,) = collect(tmp_path / "r.db")
    assert stored.metrics["diverged"] == 1.0 and stored.metrics["test_mse"] == 0.5


def test_omega_trains_through_the_unrolled_twin() -> None:
    torch.manual_seed(0)
    model = RecurrentModel(3, 6, 1)
    opt = build_optimizer("adam", model.parameters(), 1e-2, 0.0)
    loop = Loop(steps=3, eval_every=10, record_every=10, clip=1.0, omega=2.0)
    w = model.rnn.weight_hh_l0.detach().clone()
    x = torch.randn(4, 5, 3)  # [B, T, F]

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x[:, 0, :1]  # remember the first step's first feature

    m = train(model, _ctx(None), loop, opt, batch, F.mse_loss, lambda: {})
    assert m["diverged"] == 0.0 and not torch.equal(w, model.rnn.weight_hh_l0)
