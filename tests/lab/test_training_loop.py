"""The lab's one training loop (networks in lockstep, hooks, clipping, divergence) and
the experiments' training on top of it: what it records, when, and how a divergence is
stored."""

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
from backprobe.lab.training import Trainee, lab_threads, train_lockstep
from backprobe.probe import Probe
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


def _trainee(db, name: str, lr: float = 0.1) -> Trainee:  # type: ignore[no-untyped-def]
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return Trainee(model, opt, Probe(model, every=1, db=db, name=name))


def _classes(n: int = 12):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n + 1, 8, 3, generator=g)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return xs[step], (xs[step].sum(-1) > 0).long()

    return batch


def test_lockstep_networks_share_batches_and_a_hook_stops_one_early(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    db = tmp_path / "r.db"
    early, full = _trainee(db, "early"), _trainee(db, "full")
    seen: list[tuple[int, str]] = []

    def after(step: int, trainee: Trainee, recorded: bool) -> None:
        seen.append((step, trainee.probe.name))
        trainee.stopped = trainee is early and step == 3

    train_lockstep([early, full], 6, _classes(), after_update=after)
    assert early.steps == 4 and full.steps == 6
    assert seen[:2] == [(0, "early"), (0, "full")]  # interleaved, in the given order
    assert [s for s, name in seen if name == "full"] == list(range(6))
    assert [len(open_run(db, n).steps) for n in ("early", "full")] == [4, 6]
    assert all(open_run(db, n).status == "finished" for n in ("early", "full"))


def test_a_diverged_network_stops_after_its_post_mortem_and_the_others_go_on(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    db = tmp_path / "r.db"
    healthy = _trainee(db, "healthy")
    broken = _trainee(db, "broken")
    plain = broken.loss

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        task, total = plain(model, x, y)
        # the third step's loss is inf: a diverged network
        return (task * math.inf, total * math.inf) if len(losses) >= 2 else (task, total)

    losses: list[float] = []
    broken.loss = loss  # type: ignore[assignment]  # a test loss that diverges

    def after(step: int, trainee: Trainee, recorded: bool) -> None:
        if trainee is broken:
            losses.append(trainee.loss_value)

    weight = broken.model[0].weight
    before: list[torch.Tensor] = []

    def before_step(step: int, trainee: Trainee) -> None:
        if trainee is broken:
            before.append(weight.detach().clone())

    train_lockstep(
        [broken, healthy], 6, _classes(), before_probe_step=before_step, after_update=after
    )
    assert broken.diverged_at == 2 and broken.steps == 4 and broken.stopped
    assert healthy.steps == 6 and healthy.diverged_at is None
    assert torch.equal(before[2], before[3])  # the diverged step made no update


def test_clipping_bounds_the_recorded_gradient_and_measures_the_norm_before(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    trainee = _trainee(tmp_path / "r.db", "clipped", lr=0.0)
    trainee.clip = 1e-3
    norms: list[float] = []
    train_lockstep(
        [trainee], 3, _classes(), before_probe_step=lambda s, t: norms.append(t.grad_norm)
    )
    run = open_run(tmp_path / "r.db", "clipped")
    assert all(n > 1e-2 for n in norms)
    assert np.allclose(run.history("clip/post_norm"), 1e-3, rtol=1e-3)


def test_lab_threads_sets_one_thread_and_restores_the_count() -> None:
    previous = torch.get_num_threads()
    with lab_threads():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == previous
