"""The probe inside real training loops: gradient accumulation, frozen layers, a CPU
GradScaler, evaluation forwards under no_grad, and bitwise-identical training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from .models import loss_fn, make_input, make_model, mlp
from .reference import Recorder, assert_matches, expected_stats

# -- gradient accumulation -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tanh_mlp", "relu_mlp", "cnn", "residual"])
def test_accumulated_micro_batches_match_reference(kind, probe_one_step):
    model = make_model(kind)
    batches = [make_input(kind, batch=b) for b in (5, 3, 2)]  # unequal micro-batches
    probe, rec, _ = probe_one_step(model, batches)

    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info))


def test_accumulation_pools_signal_and_activations_over_micro_batches(probe_one_step):
    model = make_model("tanh_mlp")
    batches = [make_input("tanh_mlp", batch=4) for _ in range(4)]
    probe, rec, _ = probe_one_step(model, batches)

    col = probe.layers.index("1")  # the first Tanh
    grads, outs = rec.grads["1"], rec.outputs["1"]
    assert len(grads) == len(outs) == 4
    pooled = torch.cat([o.reshape(-1) for o in outs])
    np.testing.assert_allclose(
        probe.history("signal_norm")[0, col],
        float(sum(g.pow(2).sum() for g in grads).sqrt()),
        rtol=1e-6,
    )
    np.testing.assert_allclose(probe.history("act_mean")[0, col], pooled.mean().item(), rtol=1e-6)
    np.testing.assert_allclose(
        probe.history("act_std")[0, col], pooled.std(correction=0).item(), rtol=1e-6
    )
    # parameter gradients are the accumulated .grad
    first = probe.layers.index("0")
    np.testing.assert_allclose(
        probe.history("grad_norm")[0, first],
        float(torch.cat([p.grad.reshape(-1) for p in model[0].parameters()]).norm()),
        rtol=1e-6,
    )


def _gated_relu() -> nn.Sequential:
    """Unit 0 = relu(x0 - 1), unit 1 = relu(-1): unit 0 lives only where x0 > 1."""
    lin = nn.Linear(1, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0], [0.0]], dtype=torch.float64))
        lin.bias.copy_(torch.tensor([-1.0, -1.0], dtype=torch.float64))
    return nn.Sequential(lin, nn.ReLU())


def test_dead_requires_zero_in_every_micro_batch(make_probe):
    quiet = torch.zeros(3, 1, dtype=torch.float64)
    loud = torch.tensor([[0.0], [2.0]], dtype=torch.float64)

    def dead(*micro_batches):
        model = _gated_relu()
        probe = make_probe(model)
        with probe:
            for x in micro_batches:
                model(x).sum().backward()
            probe.step()
        return probe.history("dead")[0, 1]

    assert dead(quiet, quiet) == 1.0  # both units dead in all micro-batches
    assert dead(quiet, loud, quiet) == 0.5  # unit 0 fired in the second one only
    assert dead(loud) == 0.5


def test_saturation_pools_over_micro_batches(make_probe):
    model = nn.Sequential(nn.Linear(2, 2), nn.Tanh()).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2, dtype=torch.float64))
        model[0].bias.zero_()
    probe = make_probe(model)
    with probe:
        model(torch.tensor([[10.0, 0.0]], dtype=torch.float64)).sum().backward()  # 1 of 2
        model(torch.tensor([[0.0, 0.0], [0.1, 0.2]], dtype=torch.float64)).sum().backward()
        probe.step()
    np.testing.assert_allclose(probe.history("saturated")[0], [np.nan, 1 / 6])


# -- frozen layers ---------------------------------------------------------------------------


def test_frozen_first_layer(probe_one_step):
    model = make_model("tanh_mlp")
    model[0].requires_grad_(False)
    probe, rec, _ = probe_one_step(model, [make_input("tanh_mlp")])

    info = probe.layer_info
    assert info[0].frozen and info[0].n_params == 0
    assert not any(i.frozen for i in info[1:])
    assert np.isnan(probe.history("grad_norm")[0, 0])
    assert np.isnan(probe.history("weight_norm")[0, 0])
    # nothing before the frozen input layer needs a gradient: no backward signal there
    assert np.isnan(probe.history("signal_norm")[0, :2]).all()
    assert np.isfinite(probe.history("act_mean")[0]).all()
    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info))


def test_frozen_middle_layer_still_passes_signal(probe_one_step):
    model = make_model("tanh_mlp")
    model[2].requires_grad_(False)
    probe, rec, _ = probe_one_step(model, [make_input("tanh_mlp")])

    assert [i.frozen for i in probe.layer_info] == [False, False, True, False, False]
    assert np.isnan(probe.history("grad_norm")[0, 2])
    assert np.isfinite(probe.history("signal_norm")[0]).all()
    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info))


def test_partially_frozen_layer_counts_trainable_parameters_only(probe_one_step):
    model = make_model("tanh_mlp")
    model[2].weight.requires_grad_(False)
    probe, rec, _ = probe_one_step(model, [make_input("tanh_mlp")])

    info = probe.layer_info[2]
    assert not info.frozen and info.n_params == model[2].bias.numel()
    np.testing.assert_allclose(
        probe.history("grad_norm")[0, 2], model[2].bias.grad.norm().item(), rtol=1e-6
    )
    np.testing.assert_allclose(
        probe.history("weight_norm")[0, 2], model[2].bias.norm().item(), rtol=1e-6
    )
    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info))


def test_layer_frozen_during_training_loses_its_gradient_norm(make_probe):
    model = make_model("tanh_mlp")
    probe = make_probe(model)
    with probe:
        for step in range(2):
            if step == 1:
                model[0].requires_grad_(False)  # its stale .grad must not be reported
            loss_fn(model(make_input("tanh_mlp"))).backward()
            probe.step()
    grad = probe.history("grad_norm")[:, 0]
    assert np.isfinite(grad[0]) and np.isnan(grad[1])


# -- GradScaler ------------------------------------------------------------------------------


@pytest.mark.parametrize("unscale_first", [False, True], ids=["scaled", "unscaled"])
@pytest.mark.parametrize("growth_interval", [2000, 1], ids=["fixed", "growing"])
def test_grad_scaler_statistics_equal_unscaled_run(unscale_first, growth_interval, make_probe):
    """Loss scaling by powers of two is exact: a scaled run must record the statistics of
    the plain run, step after step, whether or not ``unscale_`` ran before ``step``."""
    model = make_model("tanh_mlp", dtype=torch.float32)
    twin = copy.deepcopy(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=growth_interval)
    probe = make_probe(model, scaler=scaler)
    rec = Recorder(twin, probe.layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.05)
    scales, expected = [], []
    with probe:
        for _ in range(3):
            x = make_input("tanh_mlp", dtype=torch.float32)
            loss = loss_fn(model(x))
            scaler.scale(loss).backward()
            if unscale_first:
                scaler.unscale_(opt)
            scales.append(scaler.get_scale())
            probe.step(loss)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()

            rec.reset()
            loss_fn(twin(x)).backward()
            expected.append(expected_stats(rec, probe.layers, probe.layer_info))
            twin_opt.step()
            twin_opt.zero_grad()

    if growth_interval == 1:
        assert scales == [2.0**10, 2.0**11, 2.0**12]
    for row, exp in enumerate(expected):
        assert_matches(probe, exp, row=row, rtol=1e-4, atol=1e-6)


def test_bfloat16_autocast_matches_reference(make_probe):
    """Under CPU autocast the layers output bfloat16; statistics are still accumulated in
    float32 and match a float64 reference computed from the same bfloat16 tensors."""
    model = make_model("relu_mlp", dtype=torch.float32)
    twin = copy.deepcopy(model)
    probe = make_probe(model)
    rec = Recorder(twin, probe.layers)
    x = make_input("relu_mlp", batch=8, dtype=torch.float32)
    with probe:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        loss_fn(out.float()).backward()
        probe.step()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = twin(x)
    loss_fn(ref.float()).backward()

    assert rec.outputs["0"][0].dtype == torch.bfloat16
    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info), rtol=1e-4, atol=1e-6)


# -- forwards under no_grad ------------------------------------------------------------------


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_forward_without_grad_does_not_pollute_statistics(context, make_probe):
    model = make_model("relu_mlp")
    twin = copy.deepcopy(model)
    probe = make_probe(model)
    rec = Recorder(twin, probe.layers)
    odd = 100 * make_input("relu_mlp", batch=7)  # very different activations
    with probe:
        for _ in range(2):
            with context():
                model(odd)  # evaluation before the training forward
            x = make_input("relu_mlp")
            loss_fn(model(x)).backward()
            with context():
                model(odd)  # and between backward and step
            probe.step()
            rec.reset()
            loss_fn(twin(x)).backward()
            expected = expected_stats(rec, probe.layers, probe.layer_info)
            model.zero_grad()
            twin.zero_grad()
    assert_matches(probe, expected, row=1)


# -- no effect on training -------------------------------------------------------------------


class Trainee(nn.Module):
    """Tanh and ReLU layers with dropout (which draws random numbers)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 16), nn.ReLU(),
            nn.LayerNorm(16), nn.Linear(16, 3),
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)


def _train(with_probe: bool, make_probe, every=1, steps: int = 5):
    torch.manual_seed(42)
    model = Trainee()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = make_probe(model, every=every) if with_probe else None
    if probe is not None:
        probe.attach()
    losses = []
    for _ in range(steps):
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if probe is not None:
            probe.step(loss)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    if probe is not None:
        probe.close()
    return model, losses


@pytest.mark.parametrize("every", [1, 2])
def test_training_is_bitwise_identical_with_probe(every, make_probe):
    plain, plain_losses = _train(False, make_probe)
    probed, probed_losses = _train(True, make_probe, every=every)

    assert probed_losses == plain_losses
    for (name, a), (_, b) in zip(plain.named_parameters(), probed.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_probe_changes_no_output_or_gradient(make_probe):
    model = mlp(nn.Sigmoid, dtype=torch.float32)
    twin = copy.deepcopy(model)
    x = torch.randn(4, 6)
    probe = make_probe(model)
    with probe:
        out = model(x)
        out.sum().backward()
        probe.step()
    ref = twin(x)
    ref.sum().backward()
    assert torch.equal(out, ref)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)
