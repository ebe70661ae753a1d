"""init_: every scheme's statistics against its formula, per layer type; LSUV and the
edge of chaos measured; and the 50-layer sigmoid network cured by swap + He init."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import backprobe as bp
from backprobe.errors import RemedyError
from backprobe.lab.models import DeepMLP
from backprobe.lab.tasks import classification_task
from backprobe.remedies import init_, swap_activations_
from backprobe.theory.meanfield import edge_of_chaos_sigma_w, mean_field


def _std(t: torch.Tensor) -> float:
    return float(t.detach().double().std())


@pytest.mark.parametrize(
    ("scheme", "expected_std"),
    [
        ("xavier_uniform", math.sqrt(2.0 / (400 + 300))),
        ("xavier_normal", math.sqrt(2.0 / (400 + 300))),
        ("he_uniform", math.sqrt(2.0) / math.sqrt(300)),  # ReLU gain √2, fan-in 300
        ("he_normal", math.sqrt(2.0) / math.sqrt(300)),
        ("edge_of_chaos", math.sqrt(2.0) / math.sqrt(300)),  # ReLU: σ_w = √2
    ],
)
def test_linear_weight_std_follows_the_scheme(scheme, expected_std):
    model = nn.Sequential(nn.Linear(300, 400), nn.ReLU())
    report = init_(model, scheme)
    assert report.activation == "relu"
    assert _std(model[0].weight) == pytest.approx(expected_std, rel=0.03)
    assert torch.all(model[0].bias == 0)


def test_conv_uses_its_receptive_field_as_fan_in():
    model = nn.Sequential(nn.Conv2d(16, 64, 3), nn.ReLU())
    init_(model, "he_normal")
    assert _std(model[0].weight) == pytest.approx(math.sqrt(2.0 / (16 * 9)), rel=0.03)
    init_(model, "he_normal", mode="fan_out")
    assert _std(model[0].weight) == pytest.approx(math.sqrt(2.0 / (64 * 9)), rel=0.03)


@pytest.mark.parametrize(
    ("activation", "gain"), [("tanh", 1.0), ("relu", math.sqrt(2.0)), ("gelu", math.sqrt(2.0))]
)
def test_orthogonal_has_every_singular_value_at_the_critical_gain(activation, gain):
    """Tanh 1 (σ_w² = 1, Pennington et al. 2017), ReLU √2; GELU, with no critical σ_w at
    σ_b = 0, keeps the table's ReLU-like √2."""
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 32))
    init_(model, "orthogonal", activation=activation)
    for layer in (model[0], model[2]):
        s = torch.linalg.svdvals(layer.weight.detach())
        torch.testing.assert_close(s, torch.full_like(s, gain), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "elu"])
def test_orthogonal_gain_puts_the_network_at_chi1_of_one(activation):
    """Mean field's χ1 at the weights' measured σ_w and σ_b = 0 is 1: the edge of chaos,
    where dynamical isometry is possible (tanh's old gain 5/3 gave χ1 = 1.21, chaotic)."""
    model = nn.Sequential(nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 128))
    init_(model, "orthogonal", activation=activation)
    sigma_w = float(model[0].weight.detach().double().pow(2).sum(1).mean().sqrt())
    assert mean_field(activation, sigma_w, 0.0).chi1 == pytest.approx(1.0, abs=1e-3)
    assert mean_field("tanh", 5.0 / 3.0, 0.0).chi1 == pytest.approx(1.21, abs=0.01)


def test_orthogonal_tanh_keeps_a_deep_net_healthy():
    """64 tanh layers, orthogonal: the first/last gradient ratio within 10× of 1 and no
    exploding finding (gain 5/3 gave a ratio of ~400, the chaotic phase)."""
    torch.manual_seed(0)
    model = DeepMLP(64, 64, 64, 10, activation="tanh")
    init_(model, "orthogonal")
    result = bp.check(model, input_shape=(32, 64))
    assert 0.1 < result.verdict.ratio < 10
    assert not [f for f in result if f.kind in ("exploding", "vanishing")]


def test_recurrent_blocks_forget_bias_and_gains():
    lstm = nn.LSTM(8, 16, num_layers=2)
    gru = nn.GRU(8, 16)
    rnn = nn.RNN(8, 16, nonlinearity="tanh")
    init_(nn.ModuleList([lstm, gru, rnn]), "orthogonal", activation="linear")
    for name, p in [*lstm.named_parameters(), *gru.named_parameters()]:
        if name.startswith("weight_hh"):
            for block in p.detach().chunk(p.shape[0] // 16):
                torch.testing.assert_close(block @ block.T, torch.eye(16), atol=1e-5, rtol=0)
    for layer in (0, 1):
        b_ih, b_hh = getattr(lstm, f"bias_ih_l{layer}"), getattr(lstm, f"bias_hh_l{layer}")
        i, f, g, o = (b_ih + b_hh).detach().chunk(4)
        assert torch.all(f == 1.0) and torch.all(i == 0) and torch.all(g == 0) and torch.all(o == 0)
    s = torch.linalg.svdvals(rnn.weight_hh_l0.detach())  # tanh RNN: gain 5/3 (driven by input)
    torch.testing.assert_close(s, torch.full_like(s, 5.0 / 3.0))
    init_(lstm, "he_normal", activation="linear", forget_bias=2.0)
    assert torch.all(lstm.bias_ih_l0.detach().chunk(4)[1] == 2.0)


def test_identity_recurrent_init_is_the_irnn():
    rnn = nn.RNN(2, 32, nonlinearity="relu")
    init_(rnn, "identity", identity_scale=0.9)
    torch.testing.assert_close(rnn.weight_hh_l0.detach(), 0.9 * torch.eye(32))
    assert torch.all(rnn.bias_hh_l0 == 0) and torch.all(rnn.bias_ih_l0 == 0)
    assert _std(rnn.weight_ih_l0) > 0
    with pytest.raises(RemedyError, match="IRNN"):
        init_(nn.LSTM(2, 4), "identity")


def test_edge_of_chaos_uses_the_mean_field_sigma_and_keeps_the_gradient():
    """Tanh with σ_b² = 0.05: σ_w from theory.meanfield; a 60-layer net at that σ_w keeps
    its backward signal within a factor 10 end to end, while σ_w/2 (ordered phase)
    shrinks it by orders of magnitude."""
    sigma_b = math.sqrt(0.05)
    sigma_w = edge_of_chaos_sigma_w("tanh", sigma_b)
    model = DeepMLP(256, 256, 60, 256, activation="tanh")
    init_(model, "edge_of_chaos", sigma_b=sigma_b)
    w = torch.cat([lin.weight.detach().flatten() for lin in model.linears[1:-1]])
    assert float(w.double().std() * 16) == pytest.approx(sigma_w, rel=0.01)  # σ_w/√256
    b = torch.cat([lin.bias.detach() for lin in model.linears])
    assert float(b.double().std()) == pytest.approx(sigma_b, rel=0.05)

    def end_to_end_ratio() -> float:
        x = torch.randn(64, 256)
        acts = []
        h = x
        for module in model:
            h = module(h)
            if isinstance(module, nn.Linear):
                h.retain_grad()
                acts.append(h)
        h.pow(2).sum().backward()
        return float(acts[1].grad.norm() / acts[-2].grad.norm())

    ratio = end_to_end_ratio()
    assert 0.1 < ratio < 10.0
    with torch.no_grad():
        for lin in model.linears:
            lin.weight.mul_(0.5)
    assert end_to_end_ratio() < 1e-3


def test_lsuv_brings_every_layer_to_unit_variance_within_ten_rounds(make_probe):
    """Measured twice: by LSUV's own report, and by the probe's act_std of every Linear
    on the same batch after init."""
    model = DeepMLP(20, 64, 12, 5, activation="tanh")
    x = torch.randn(256, 20) * 3.0 + 1.0
    tol = 0.05
    report = init_(model, "lsuv", data=x, tol=tol, max_rounds=10)
    assert [r.name for r in report.lsuv] == [f"fc{i}" for i in range(1, 13)] + ["out"]
    assert all(r.converged for r in report.lsuv)
    assert 2 <= report.max_rounds <= 10  # it had work to do, and did it in time

    probe = make_probe(model)
    with probe:
        model(x).pow(2).mean().backward()
        probe.step()
    linear = [i for i, n in enumerate(probe.layers) if n.startswith("fc") or n == "out"]
    variance = probe.history("act_std")[0, linear] ** 2
    # act_std is the std over all output elements (population or sample: 256·64 of them)
    assert np.all(np.abs(variance - 1.0) < tol + 1e-3), variance


def test_errors_name_what_to_pass():
    with pytest.raises(RemedyError, match="scheme"):
        init_(nn.Linear(2, 2), "kaiming")  # type: ignore[arg-type]
    with pytest.raises(RemedyError, match="data="):
        init_(nn.Linear(2, 2), "lsuv")
    with pytest.raises(RemedyError, match="activation="):
        init_(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.Tanh()), "he_normal")
    with pytest.raises(RemedyError, match="no"):
        init_(nn.Sequential(nn.ReLU()), "he_normal")


def _grad_ratio_and_losses(make_probe, model, task, steps, lr):
    """Train with SGD + momentum 0.9, probed at every step: (last/first layer gradient
    norm at each step, losses)."""
    probe = make_probe(model, every=1)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    with probe:
        for _ in range(steps):
            idx = torch.randint(0, len(task.y_train), (64,), generator=g)
            loss = nn.functional.cross_entropy(model(task.x_train[idx]), task.y_train[idx])
            loss.backward()
            probe.step(loss)
            opt.step()
            opt.zero_grad()
    grad = probe.history("grad_norm")
    first, last = probe.layers.index("fc1"), probe.layers.index("out")
    with np.errstate(divide="ignore"):  # a first-layer gradient that underflowed to 0
        return grad[:, last] / grad[:, first], probe.history("loss")


def test_deep_sigmoid_mlp_is_cured_by_relu_and_he_init(make_probe):
    """The seeds' 50-layer sigmoid network: the first layer's gradient is ≥ 1e8 times
    smaller than the last's; after swap_activations_ to ReLU and He init the two are
    within 100×, and training lowers the loss."""
    torch.manual_seed(0)  # the weights do not depend on the tests run before this one
    task = classification_task(n_train=2048, n_test=16, seed=0)
    # width 64: at width 32 the product of 50 random ReLU layers fluctuates more from
    # seed to seed (finite-width effects grow with depth / width)
    model = DeepMLP(task.n_features, 64, 50, task.n_classes, activation="sigmoid")
    before, _ = _grad_ratio_and_losses(make_probe, model, task, steps=1, lr=0.0)
    assert before[0] >= 1e8  # here inf: fc1's float32 gradient underflows to exactly 0

    report = swap_activations_(model, from_=nn.Sigmoid, to=nn.ReLU)
    assert len(report.swapped) == 50 and not report.functional
    init_(model, "he_normal")
    # plain SGD moves a 50-layer ReLU net slowly (over seeds its loss fell 4–27 % in 150
    # steps); with momentum 0.9 it fell 28–33 %, measured over seeds 0–4
    ratio, losses = _grad_ratio_and_losses(make_probe, model, task, steps=150, lr=0.005)
    assert np.all(ratio <= 100) and np.all(ratio >= 1e-2), ratio
    assert losses[-30:].mean() < 0.85 * losses[:30].mean(), losses


def test_the_gain_of_a_hugging_face_activation_is_inferred_from_the_table():
    activations = pytest.importorskip("transformers.activations")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(400, 400), activations.NewGELUActivation(), nn.Identity())
    report = init_(model, "he_normal")
    assert report.activation == "gelu_tanh"  # the identity is no activation to fit
    std = float(model[0].weight.detach().std())
    assert std == pytest.approx(math.sqrt(2.0 / 400), rel=0.02)  # ReLU-like: gain √2
