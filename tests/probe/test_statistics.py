"""Every recorded statistic against plain-autograd reference numbers, on MLPs (tanh, sigmoid,
ReLU), a small CNN and a residual net, in float64 and float32."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from backprobe.probe.stats import StatSlots, grad_row_norms

from .models import MODEL_KINDS, loss_fn, make_input, make_model, mlp
from .reference import LAYER_STATS, Recorder, assert_matches, expected_stats


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_statistic_matches_reference_float64(kind, probe_one_step):
    model = make_model(kind)
    probe, rec, ref_loss = probe_one_step(model, [make_input(kind)])

    assert probe.layers == rec.first_calls
    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(probe.history("loss"), [ref_loss], rtol=1e-6)
    np.testing.assert_array_equal(probe.history("first_nonfinite"), [[-1, -1]])


@pytest.mark.parametrize("kind", ["tanh_mlp", "relu_mlp", "cnn", "residual"])
def test_every_statistic_matches_reference_float32(kind, probe_one_step):
    model = make_model(kind, dtype=torch.float32)
    x = make_input(kind, dtype=torch.float32)
    probe, rec, _ = probe_one_step(model, [x])

    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_statistics_that_apply_are_measured_and_others_are_nan(kind, probe_one_step):
    model = make_model(kind)
    probe, rec, _ = probe_one_step(model, [make_input(kind)])

    for info in probe.layer_info:
        module = rec.modules[info.name]
        column = {stat: probe.history(stat)[0, info.index] for stat in LAYER_STATS}
        owns = any(True for _ in module.parameters(recurse=False))
        assert np.isnan(column["grad_norm"]) != owns, info
        assert np.isnan(column["weight_norm"]) != owns, info
        assert np.isnan(column["saturated"]) != isinstance(module, (nn.Tanh, nn.Sigmoid)), info
        assert np.isnan(column["dead"]) != isinstance(module, nn.ReLU), info
        for stat in ("signal_norm", "act_mean", "act_std", "nonfinite_out", "nonfinite_grad"):
            assert np.isfinite(column[stat]), (info, stat)


def test_history_shapes_and_dtypes(probe_one_step):
    model = make_model("tanh_mlp")
    probe, _, _ = probe_one_step(model, [make_input("tanh_mlp")])
    n_layers = len(probe.layers)

    assert n_layers == 5
    for stat in (*LAYER_STATS, "grad_to_weight", "gain", "nonfinite"):
        h = probe.history(stat)
        assert h.shape == (1, n_layers), stat
        assert h.dtype == np.float64, stat
    assert probe.history("loss").shape == (1,)
    assert probe.history("first_nonfinite").shape == (1, 2)
    np.testing.assert_array_equal(probe.steps, [0])
    assert probe.steps.dtype == np.int64


def test_layer_info_describes_layers(probe_one_step):
    model = make_model("sigmoid_mlp")
    probe, _, _ = probe_one_step(model, [make_input("sigmoid_mlp")])

    info = probe.layer_info
    assert [i.index for i in info] == list(range(5))
    assert [i.name for i in info] == ["0", "1", "2", "3", "4"]
    assert [i.type for i in info] == ["Linear", "Sigmoid", "Linear", "Sigmoid", "Linear"]
    assert [i.family for i in info] == ["", "sigmoid", "", "sigmoid", ""]
    assert [i.n_params for i in info] == [6 * 12 + 12, 0, 12 * 10 + 10, 0, 10 * 3 + 3]
    assert not any(i.frozen for i in info)


@pytest.mark.parametrize("kind", ["residual", "relu_mlp"])
@pytest.mark.parametrize("batches", [(5, 5, 5), (2, 9, 4)], ids=["same", "growing"])
def test_statistics_of_later_steps_match_reference(kind, batches, make_probe):
    """Three SGD steps: each recorded row matches a reference trained the same way, so
    nothing of one step leaks into the next, also when a step needs more storage for its
    statistics than the one before (:class:`StatSlots`) or less."""
    model = make_model(kind)
    twin = copy.deepcopy(model)
    probe = make_probe(model)
    rec = Recorder(twin, probe.layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    expected = []
    with probe:
        for batch in batches:
            x = make_input(kind, batch)
            loss_fn(model(x)).backward()
            probe.step()
            opt.step()
            opt.zero_grad()
            rec.reset()
            rec.watch(probe.layers)  # the residual blocks the first step found
            loss_fn(twin(x)).backward()
            expected.append(expected_stats(rec, probe.layers, probe.layer_info))
            twin_opt.step()
            twin_opt.zero_grad()
    for row, exp in enumerate(expected):
        assert_matches(probe, exp, row=row)
    assert np.isnan(probe.history("loss")).all()  # step() was given no loss


class Reordered(nn.Module):
    """Registers ``late`` before ``early`` but runs ``early`` first."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Linear(4, 2)
        self.early = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.late(torch.tanh(self.early(x)))


def test_layers_are_ordered_by_execution_not_registration(probe_one_step, make_probe):
    assert make_probe(Reordered().double()).layers == ["late", "early"]  # before any step

    model = Reordered().double()
    probe, rec, _ = probe_one_step(model, [torch.randn(4, 3, dtype=torch.float64)])

    assert probe.layers == ["early", "late"]
    np.testing.assert_allclose(
        probe.history("grad_norm")[0],
        [model.early.weight.grad.norm().hypot(model.early.bias.grad.norm()).item(),
         model.late.weight.grad.norm().hypot(model.late.bias.grad.norm()).item()],
        rtol=1e-6,
    )  # fmt: skip
    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info))


class SharedLayer(nn.Module):
    """One Linear and one Tanh applied twice: calls pool within the step."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 7)
        self.shared = nn.Linear(7, 7)
        self.act = nn.Tanh()
        self.out = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.inp(x))
        h = self.act(self.shared(h))
        h = self.act(self.shared(h))
        return self.out(h)


def test_layer_called_twice_pools_both_calls(probe_one_step):
    model = SharedLayer().double()
    probe, rec, _ = probe_one_step(model, [torch.randn(6, 5, dtype=torch.float64)])

    # by each layer's first backward event: act's third call is nearer the loss than
    # shared's second
    assert probe.layers == ["inp", "shared", "act", "out"]
    assert len(rec.grads["shared"]) == 2 and len(rec.outputs["act"]) == 3
    g1, g2 = rec.grads["shared"]
    col = probe.layers.index("shared")
    np.testing.assert_allclose(
        probe.history("signal_norm")[0, col],
        float(torch.sqrt(g1.pow(2).sum() + g2.pow(2).sum())),
        rtol=1e-6,
    )
    acts = torch.cat([o.reshape(-1) for o in rec.outputs["act"]])
    col = probe.layers.index("act")
    np.testing.assert_allclose(probe.history("act_mean")[0, col], acts.mean().item(), rtol=1e-6)
    np.testing.assert_allclose(
        probe.history("act_std")[0, col], acts.std(correction=0).item(), rtol=1e-6
    )
    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info))


def test_residual_signal_includes_skip_path(probe_one_step):
    """The stem's output feeds the block twice (skip and branch): its signal is the norm
    of the summed gradient, which retain_grad() sees too."""
    model = make_model("residual")
    x = make_input("residual")
    probe, _, _ = probe_one_step(model, [x])

    twin = make_model("residual")
    twin.load_state_dict(model.state_dict())  # model's parameters are untouched by step
    h = twin.stem(x)
    h.retain_grad()
    loss_fn(twin.head(twin.blocks(h))).backward()
    stem = probe.layers.index("stem")
    np.testing.assert_allclose(
        probe.history("signal_norm")[0, stem], h.grad.norm().item(), rtol=1e-6
    )


def test_inplace_relu_gives_same_statistics_as_out_of_place(probe_one_step):
    torch.manual_seed(1)
    inplace = mlp(lambda: nn.ReLU(inplace=True))
    plain = mlp(nn.ReLU)
    plain.load_state_dict(inplace.state_dict())
    x = make_input("relu_mlp", batch=8)

    probe_a, _, _ = probe_one_step(inplace, [x])
    probe_b, rec, _ = probe_one_step(plain, [x])

    expected = expected_stats(rec, probe_b.layers)
    assert_matches(probe_a, expected)
    assert_matches(probe_b, expected)


class OwnParameter(nn.Module):
    """A module with a parameter of its own and a Linear child."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.linspace(0.5, 1.5, 4))
        self.proj = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) * self.gate


def test_custom_module_with_own_parameter_is_a_layer(probe_one_step):
    model = OwnParameter().double()
    probe, rec, _ = probe_one_step(model, [torch.randn(5, 3, dtype=torch.float64)])

    assert probe.layers == ["proj", "OwnParameter"]  # the root finishes last
    root = probe.layers.index("OwnParameter")
    np.testing.assert_allclose(
        probe.history("grad_norm")[0, root], model.gate.grad.norm().item(), rtol=1e-6
    )
    np.testing.assert_allclose(
        probe.history("weight_norm")[0, root], model.gate.norm().item(), rtol=1e-6
    )
    assert probe.layer_info[root].n_params == 4
    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info))


def test_tiny_gradients_are_measured_not_rounded_to_zero(make_probe):
    """Entries near 1e-25 square to 1e-50, below float32's smallest number: norms must be
    accumulated wider, or a vanishing gradient reads as exactly zero."""
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    probe = make_probe(model).attach()
    hidden = model[1](model[0](torch.randn(8, 64)))
    hidden.retain_grad()
    (model[2](hidden).sum() * 1e-25).backward()
    probe.step()
    expected = torch.cat([p.grad.double().reshape(-1) for p in model[0].parameters()]).norm()
    assert 0 < expected.item() < 1e-20
    np.testing.assert_allclose(probe.history("grad_norm")[0, 0], expected.item(), rtol=1e-5)
    signal = hidden.grad.double().norm().item()
    np.testing.assert_allclose(probe.history("signal_norm")[0, 1], signal, rtol=1e-5)


def test_sparse_embedding_gradients_are_measured(make_probe):
    """nn.Embedding(sparse=True) produces sparse gradients, with repeated indices."""
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Flatten(), nn.Linear(8, 1))
    probe = make_probe(model).attach()
    tokens = torch.tensor([[1, 1], [3, 1], [7, 3]])  # repeated rows must be summed first
    model(tokens).sum().backward()
    probe.step()
    expected = model[0].weight.grad.to_dense().norm().item()
    np.testing.assert_allclose(probe.history("grad_norm")[0, 0], expected, rtol=1e-6)


def test_lazy_modules_are_probed_once_materialised(tmp_path):
    """LazyLinear has no shapes at attach; the run opens, and the first forward fills in."""
    from backprobe import Probe

    model = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(1))
    x = torch.randn(3, 5)
    with Probe(model, db=tmp_path / "runs.db") as probe:
        model(x).sum().backward()
        probe.step()
    expected = torch.cat([p.grad.reshape(-1) for p in model[0].parameters()]).norm().item()
    np.testing.assert_allclose(probe.history("grad_norm")[0, 0], expected, rtol=1e-6)
    assert [layer.n_params for layer in probe.layer_info] == [48, 0, 9]


@pytest.mark.parametrize(
    "scale", [1.0, 1e-25, 1e25, 1e-12, 0.0], ids=["unit", "tiny", "huge", "small", "zero"]
)
def test_signal_row_norms_equal_float64_norms_at_every_scale(scale):
    """A float32 signal's per-sample norms equal float64 ones (1e-6) whatever the scale,
    also when one sample is healthy and another vanishing, and stay NaN for a NaN sample."""
    rows = torch.randn(4, 300, generator=torch.Generator().manual_seed(0))
    rows[1] *= 1e-24  # a vanishing sample next to healthy ones
    rows = (rows * scale).float()
    expected = rows.double().norm(dim=1).numpy()
    np.testing.assert_allclose(grad_row_norms(rows).double().numpy(), expected, rtol=1e-6)
    rows[2, 5] = float("nan")
    assert np.isnan(grad_row_norms(rows).numpy()[2])


def test_stat_slots_reuse_their_storage_once_grown():
    """The first step's statistics get fresh tensors; from the next step on they are
    views of one storage per dtype, handed out front to back, grown when a step needs
    more."""
    slots = StatSlots()
    cpu = torch.device("cpu")
    first = [slots.take(3, cpu, torch.float32), slots.take(2, cpu, torch.float64)]
    assert [t.shape[0] for t in first] == [3, 2]
    slots.reset()
    a, b = slots.take(2, cpu, torch.float32), slots.take(1, cpu, torch.float32)
    assert b.data_ptr() == a.data_ptr() + 2 * a.element_size()
    a.fill_(1.0)
    b.fill_(2.0)
    assert a.tolist() == [1.0, 1.0] and b.tolist() == [2.0]  # no overlap
    beyond = slots.take(4, cpu, torch.float32)  # 7 > 3: a fresh tensor for this step
    assert beyond.untyped_storage().data_ptr() != a.untyped_storage().data_ptr()
    slots.reset()
    grown = slots.take(7, cpu, torch.float32)
    slots.reset()
    assert slots.take(7, cpu, torch.float32).data_ptr() == grown.data_ptr()
