"""Probe(optimizer=): the update the optimizer applied after each recorded step, against
||Δθ|| / ||θ|| measured by hand around ``opt.step()``, and Adam's effective step size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from backprobe import Probe, open_run
from backprobe.errors import ProbeConfigError

STEPS = 5


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3)
    )


def hand_ratios(model: nn.Module, before: list[torch.Tensor]) -> list[float]:
    """||Δθ|| / ||θ|| per nn.Linear in float64, θ = ``before`` (the model's parameters
    in registration order before opt.step())."""
    now = dict(model.named_parameters())
    then = dict(zip(now, before, strict=True))
    ratios = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            keys = [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
            delta = torch.cat([(now[k].detach() - then[k]).double().flatten() for k in keys])
            weight = torch.cat([then[k].double().flatten() for k in keys])
            ratios.append(float(delta.norm() / weight.norm()))
    return ratios


def train(model: nn.Module, opt: torch.optim.Optimizer, probe: Probe, steps: int = STEPS):
    """The documented loop; returns the hand-measured ratios of each step's update."""
    hand = []
    with probe:
        for _ in range(steps):
            loss = model(torch.randn(8, 6)).pow(2).mean()
            loss.backward()
            probe.step(loss)
            before = [p.detach().clone() for p in model.parameters()]
            opt.step()
            opt.zero_grad()
            hand.append(hand_ratios(model, before))
    return np.asarray(hand)


def linear_columns(probe: Probe) -> list[int]:
    return [i for i, layer in enumerate(probe.layer_info) if layer.type == "Linear"]


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
        lambda p: torch.optim.Adam(p, lr=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True, foreach=False),
    ],
    ids=["sgd-momentum", "sgd-nesterov-wd", "adam", "adamw", "adam-amsgrad-loop"],
)
def test_update_to_weight_is_the_applied_update(make_probe, make_opt):
    model = mlp()
    opt = make_opt(model.parameters())
    probe = make_probe(model, optimizer=opt)
    hand = train(model, opt, probe)
    measured = probe.history("update_to_weight")[:, linear_columns(probe)]
    assert measured.shape == hand.shape == (STEPS, 3)
    np.testing.assert_allclose(measured, hand, rtol=2e-6)
    activations = [i for i in range(len(probe.layers)) if i not in linear_columns(probe)]
    assert np.isnan(probe.history("update_to_weight")[:, activations]).all()  # no parameters


def hand_adam_step(opt: torch.optim.Optimizer, module: nn.Linear) -> float:
    """Median of lr / (sqrt(v / (1 - beta2^t)) + eps) over the module's parameters."""
    group = opt.param_groups[0]
    values = []
    for p in module.parameters():
        state = opt.state[p]
        v = state["max_exp_avg_sq" if group["amsgrad"] else "exp_avg_sq"].double()
        corrected = v / (1 - group["betas"][1] ** float(state["step"]))
        values.append((group["lr"] / (corrected.sqrt() + group["eps"])).flatten())
    return float(torch.cat(values).median())


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_step_is_the_median_effective_step(make_probe, amsgrad):
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, amsgrad=amsgrad)
    probe = make_probe(model, optimizer=opt)
    train(model, opt, probe, steps=3)
    last = probe.history("adam_step")[-1, linear_columns(probe)]
    hand = [hand_adam_step(opt, m) for m in model if isinstance(m, nn.Linear)]
    np.testing.assert_allclose(last, hand, rtol=1e-5)


def test_sgd_has_no_adam_step(make_probe):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = make_probe(model, optimizer=opt)
    train(model, opt, probe, steps=2)
    assert np.isnan(probe.history("adam_step")).all()
    assert np.isfinite(probe.history("update_to_weight")[:, linear_columns(probe)]).all()


def test_without_optimizer_the_update_is_not_measured(make_probe):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = make_probe(model)
    train(model, opt, probe, steps=2)
    assert np.isnan(probe.history("update_to_weight")).all()


def test_updates_belong_to_recorded_steps_only(make_probe):
    """every=2: the update after step 2 is step 2's, not step 3's; the last recorded step
    gets the update after it too."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    probe = make_probe(model, optimizer=opt, every=2)
    hand = train(model, opt, probe, steps=5)
    assert probe.steps.tolist() == [0, 2, 4]
    measured = probe.history("update_to_weight")[:, linear_columns(probe)]
    np.testing.assert_allclose(measured, hand[[0, 2, 4]], rtol=2e-6)


@pytest.mark.parametrize("every", [1, 2])
def test_a_backward_inside_the_optimizers_closure_gets_its_own_update(make_probe, every):
    """opt.step(closure) with the backward and probe.step() in the closure (Lightning's
    automatic optimisation): the step is recorded after the pre-hook, before the update,
    and the update that follows is still its own, not the next recorded step's."""
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = make_probe(model, optimizer=opt, every=every)
    hand = []
    with probe:
        for _ in range(STEPS):
            x = torch.randn(8, 6)

            def closure(x=x):
                opt.zero_grad()
                loss = model(x).pow(2).mean()
                loss.backward()
                probe.step(loss)
                return loss

            before = [p.detach().clone() for p in model.parameters()]
            opt.step(closure)
            hand.append(hand_ratios(model, before))
    recorded = list(range(0, STEPS, every))
    assert probe.steps.tolist() == recorded
    measured = probe.history("update_to_weight")[:, linear_columns(probe)]
    np.testing.assert_allclose(measured, np.asarray(hand)[recorded], rtol=2e-6)


def test_a_step_the_optimizer_skips_keeps_nan(make_probe):
    """No opt.step() between a recorded step and the next (a GradScaler that found an
    inf, an accumulation boundary elsewhere): that step has no update; the next step's
    update is not given to it."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = make_probe(model, optimizer=opt)
    with probe:
        for step in range(4):
            model(torch.randn(8, 6)).pow(2).mean().backward()
            probe.step()
            if step != 1:
                opt.step()
            opt.zero_grad()
    ratios = probe.history("update_to_weight")[:, linear_columns(probe)]
    assert np.isfinite(ratios[[0, 2, 3]]).all()
    assert np.isnan(ratios[1]).all()


def test_a_step_grad_scaler_skips_keeps_nan(make_probe):
    """GradScaler does not call opt.step() when a gradient holds an inf."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    probe = make_probe(model, optimizer=opt, scaler=scaler)
    with probe:
        for step in range(3):
            scaler.scale(model(torch.randn(8, 6)).pow(2).mean()).backward()
            if step == 1:
                model[0].weight.grad[0, 0] = float("inf")
            probe.step()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    ratios = probe.history("update_to_weight")[:, linear_columns(probe)]
    assert np.isfinite(ratios[[0, 2]]).all()
    assert np.isnan(ratios[1]).all()


def test_a_second_optimizer_step_is_not_counted(make_probe):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = make_probe(model, optimizer=opt)
    with probe:
        model(torch.randn(8, 6)).pow(2).mean().backward()
        probe.step()
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        first = hand_ratios(model, before)
        opt.step()  # the same gradients again: not the recorded step's update
    measured = probe.history("update_to_weight")[0, linear_columns(probe)]
    np.testing.assert_allclose(measured, first, rtol=2e-6)


def test_parameters_the_probe_does_not_probe(make_probe):
    """The optimizer also steps an excluded layer and a free tensor: they are left out of
    the probed layers' ratios; a probed layer the optimizer does not step gets NaN."""
    model = mlp()
    extra = nn.Parameter(torch.randn(4))
    unstepped = model[4]
    groups = [
        {"params": [*model[0].parameters(), *model[2].parameters()]},
        {"params": [extra], "lr": 1.0},
    ]
    opt = torch.optim.SGD(groups, lr=0.1)
    probe = make_probe(model, optimizer=opt, exclude=["2"])
    with probe:
        loss = model(torch.randn(8, 6)).pow(2).mean() + extra.sum()
        loss.backward()
        probe.step(loss)
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
    hand = hand_ratios(model, before)
    ratios = dict(zip(probe.layers, probe.history("update_to_weight")[0], strict=True))
    assert "2" not in ratios
    np.testing.assert_allclose(ratios["0"], hand[0], rtol=2e-6)
    assert unstepped.weight.grad is not None and np.isnan(ratios["4"])


def test_stored_run_has_the_updates(tmp_path):
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = Probe(model, every=1, db=tmp_path / "runs.db", name="updates", optimizer=opt)
    hand = train(model, opt, probe, steps=3)
    stored = open_run(tmp_path / "runs.db", "updates")
    columns = [i for i, layer in enumerate(stored.layer_info) if layer.type == "Linear"]
    np.testing.assert_allclose(stored.history("update_to_weight")[:, columns], hand, rtol=2e-6)
    assert np.isfinite(stored.history("adam_step")[:, columns]).all()


def test_training_is_unchanged(make_probe):
    """The hooks copy and read; the parameters after training are bitwise those of plain
    training."""
    plain = mlp()
    watched = mlp()
    watched.load_state_dict(plain.state_dict())
    data = [torch.randn(8, 6) for _ in range(3)]

    def fit(model: nn.Module, watch: bool) -> list[torch.Tensor]:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        probe = make_probe(model, optimizer=opt).attach() if watch else None
        for x in data:
            model(x).pow(2).mean().backward()
            if probe is not None:
                probe.step()
            opt.step()
            opt.zero_grad()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(fit(plain, False), fit(watched, True), strict=True):
        assert torch.equal(a, b)


def test_optimizer_must_be_an_optimizer():
    with pytest.raises(ProbeConfigError, match=r"a torch\.optim\.Optimizer"):
        Probe(mlp(), db=None, every=1, optimizer="adam")  # type: ignore[arg-type]
