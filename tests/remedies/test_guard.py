"""The guard: a run that diverges without it finishes finite with it, its actions are
stored with the run, and each mode does what it says (skip, clip, a lower learning rate
for a while)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import backprobe as bp
from backprobe.errors import RemedyError

BAD = (30, 45, 60)  # steps whose batch has targets a million times too large


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))


def train(
    probe: bp.Probe,
    guard: bp.Guard | None,
    steps: int = 70,
    bad: tuple[int, ...] = BAD,
    optimizer: torch.optim.Optimizer | None = None,
) -> list[float]:
    """SGD on a linear target with planted huge-loss batches; returns the losses."""
    net = probe.model
    opt = optimizer or torch.optim.SGD(net.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 1, generator=g)
    losses = []
    with probe:
        for step in range(steps):
            x = torch.randn(16, 4, generator=g)
            y = x @ w * (1e6 if step in bad else 1.0)
            loss = (net(x) - y).pow(2).mean()
            loss.backward()
            if guard is None:
                probe.step(loss)
                opt.step()
            else:
                guard.step(loss)
            opt.zero_grad()
            losses.append(loss.item())
    return losses


def test_a_run_that_diverges_without_the_guard_finishes_finite_with_it(tmp_path):
    db = tmp_path / "runs.db"
    unguarded = train(bp.Probe(model(), db=db, name="plain", every=10), None)
    assert not math.isfinite(unguarded[-1]) or unguarded[-1] > 1e6  # diverged

    probe = bp.Probe(model(), db=db, name="guarded", every=10)
    opt = torch.optim.SGD(probe.model.parameters(), lr=0.02)
    guarded = train(probe, bp.Guard(probe, opt, on_spike="skip"), optimizer=opt)
    assert all(math.isfinite(v) for v in guarded) and guarded[-1] < 1.0
    assert all(torch.isfinite(p).all() for p in probe.model.parameters())

    run = bp.open_run(db, "guarded")  # the skipped steps are in the stored run
    assert [(e.step, e.kind) for e in run.events] == [(s, "skip") for s in BAD]
    assert all("gradient norm" in e.detail["reason"] for e in run.events)
    spikes = [f for f in bp.findings(run) if f.kind == "spike"]
    assert [f.step for f in spikes] == list(BAD)
    assert all(f.severity == "info" and "the guard acted" in f.summary for f in spikes)


def test_a_skipped_step_leaves_weights_and_optimizer_state_untouched(make_probe):
    probe = make_probe(model(), every=10)
    opt = torch.optim.Adam(probe.model.parameters(), lr=1e-3)
    guard = bp.Guard(probe, opt, on_spike="skip")
    after: dict[str, torch.Tensor] = {}

    def snapshot(optimizer, args, kwargs) -> None:
        after.update({n: p.detach().clone() for n, p in probe.model.named_parameters()})

    opt.register_step_post_hook(snapshot)
    train(probe, guard, steps=31, bad=(30,), optimizer=opt)
    assert guard.skipped == [30]
    assert {int(state["step"]) for state in opt.state.values()} == {30}  # steps 0-29
    for name, p in probe.model.named_parameters():
        assert torch.equal(p.detach(), after[name])  # as step 29 left them
        assert p.grad is None


def test_clip_rescales_a_spike_to_the_running_median_norm(make_probe):
    probe = make_probe(model(), every=10)
    opt = torch.optim.SGD(probe.model.parameters(), lr=0.02)
    guard = bp.Guard(probe, opt, on_spike="clip")
    flat: list[torch.Tensor] = []

    def weights(optimizer, args, kwargs) -> None:
        flat.append(torch.cat([p.detach().flatten() for p in probe.model.parameters()]))

    opt.register_step_pre_hook(weights)
    opt.register_step_post_hook(weights)
    losses = train(probe, guard, steps=50, bad=(30,), optimizer=opt)
    (event,) = guard.actions
    assert event.step == 30 and event.kind == "clip"
    assert event.detail["from"] > 1e5 * event.detail["to"]
    # the update of step 30 had the usual length: lr × the running median norm
    moved = float((flat[61] - flat[60]).norm())  # around the optimizer step of step 30
    assert moved == pytest.approx(0.02 * event.detail["to"], rel=1e-3)
    assert math.isfinite(losses[-1]) and losses[-1] < 1.0


def test_scale_lr_lowers_the_rate_inside_the_optimizer_step_for_a_while(make_probe):
    probe = make_probe(model(), every=10)
    opt = torch.optim.SGD(probe.model.parameters(), lr=0.02)
    guard = bp.Guard(probe, opt, on_spike="scale_lr", lr_factor=1e-6, lr_steps=5)
    seen: list[float] = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))
    train(probe, guard, steps=40, bad=(30,), optimizer=opt)
    (event,) = guard.actions
    assert (event.step, event.kind) == (30, "scale_lr") and event.detail["until"] == 34
    assert seen[:30] == [0.02] * 30
    assert seen[30:35] == pytest.approx([0.02e-6] * 5)
    assert seen[35:] == [0.02] * 5
    assert opt.param_groups[0]["lr"] == 0.02  # what a scheduler sees never changed


def test_a_non_finite_step_is_skipped_whatever_the_mode(make_probe):
    probe = make_probe(model(), every=10)
    opt = torch.optim.SGD(probe.model.parameters(), lr=0.02)
    guard = bp.Guard(probe, opt, on_spike="clip")
    net = probe.model
    with probe:
        for step in range(5):
            loss = net(torch.randn(4, 4)).pow(2).mean() * (math.nan if step == 3 else 1.0)
            loss.backward()
            guard.step(loss)
            opt.zero_grad()
    assert [(e.step, e.kind, e.detail["reason"]) for e in guard.actions] == [
        (3, "skip", "non-finite loss or gradient")
    ]
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_the_guard_steps_through_a_grad_scaler(make_probe):
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    probe = make_probe(model(), every=10, scaler=scaler)
    opt = torch.optim.SGD(probe.model.parameters(), lr=0.02)
    guard = bp.Guard(probe, opt, on_spike="skip")
    net = probe.model
    g = torch.Generator().manual_seed(1)
    with probe:
        for step in range(35):
            x = torch.randn(16, 4, generator=g)
            y = x.sum(1, keepdim=True) * (1e6 if step == 30 else 1.0)
            loss = (net(x) - y).pow(2).mean()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)  # as clipping code does; a skipped step forgets it
            guard.step(loss)
            opt.zero_grad()
    assert guard.skipped == [30]
    norms = probe.sentinel.field("grad_norm")
    assert norms[29] < 1e3 < norms[30]  # unscaled by the sentinel


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"on_spike": "rollback"}, "on_spike"),
        ({"lr_factor": 2.0}, "lr_factor"),
        ({"clip_to": 0.0}, "clip_to"),
    ],
)
def test_bad_settings_are_refused(make_probe, kwargs, match):
    probe = make_probe(model())
    opt = torch.optim.SGD(probe.model.parameters(), lr=0.02)
    with pytest.raises(RemedyError, match=match):
        bp.Guard(probe, opt, **kwargs)


def test_the_guard_needs_a_probe_and_an_optimizer(make_probe):
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.02)
    with pytest.raises(RemedyError, match="Probe"):
        bp.Guard(net, opt)  # type: ignore[arg-type]
    with pytest.raises(RemedyError, match="Optimizer"):
        bp.Guard(make_probe(net), net)  # type: ignore[arg-type]
