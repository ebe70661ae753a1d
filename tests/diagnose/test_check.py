"""``bp.check``: what it measures and predicts, that it leaves the model as it was, and its
errors."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import backprobe as bp
from backprobe.diagnose.check import (
    FACTORY_NAMES_SHOWN,
    _jacobians_by_replicas,
    build_model,
    load_factory,
    parse_shape,
)
from backprobe.diagnose.model_rules import mlp_stack
from backprobe.errors import BackprobeError, CheckInputError
from backprobe.lab.models import DeepMLP
from backprobe.theory.jacobian import jacobian_singular_values
from backprobe.theory.meanfield import chi1


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_deep_sigmoid_verdict_findings_and_mean_field_agree_with_measurement():
    model = DeepMLP(16, 64, 12, 4, activation="sigmoid")
    result = bp.check(model, input_shape=(32, 16))
    assert isinstance(result, list) and result.verdict.status == "vanishing"
    assert result.worst == "error"
    vanishing = next(f for f in result if f.kind == "vanishing")
    init = next(f for f in result if f.kind == "initialisation")
    # mean field's √(χ1^L) and the measured backward-signal ratio agree within a factor 3
    predicted = init.evidence["predicted_grad_norm_ratio"]
    measured = vanishing.evidence["first_to_last_signal_ratio"]
    assert abs(math.log10(predicted) - math.log10(measured)) < 0.5
    assert result.mean_field.chi1 == pytest.approx(init.evidence["chi1"])
    assert result.jacobian.verdict == "vanishing"
    assert "jacobian_mean_squared_singular_value" in vanishing.evidence


def test_he_relu_mlp_is_healthy():
    result = bp.check(DeepMLP(16, 64, 10, 4, activation="relu", init="he"), input_shape=(32, 16))
    assert result.verdict.status == "healthy"
    assert all(f.severity == "info" for f in result)
    assert result.mean_field.chi1 == pytest.approx(1.0, abs=0.1)


def test_mlp_stack_reads_sigma_w_and_sigma_b():
    model = DeepMLP(16, 512, 3, 4, activation="tanh", init="xavier")
    stack = mlp_stack(model)
    assert stack.activation == "tanh" and stack.depth == 3
    assert stack.linears == ["fc1", "fc2", "fc3", "out"]
    # xavier_uniform on 512 → 512 (fc2, fc3) and 512 → 4 (out): W² mean = 2/(n_in+n_out)
    expected = (2 * (2 / 1024) + 2 / 516) / 3 * 512
    assert stack.sigma_w == pytest.approx(math.sqrt(expected), rel=0.02)
    assert stack.sigma_b == 0.0
    assert mlp_stack(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4))) is None
    assert mlp_stack(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Tanh(), nn.Linear(4, 4))) is None


def test_mean_field_finding_uses_theory_chi1():
    model = DeepMLP(16, 64, 12, 4, activation="tanh", init="orthogonal")
    with torch.no_grad():
        for lin in model.linears:
            lin.weight.mul_(0.3)  # σ_w = 5/3 · 0.3 = 0.5
    result = bp.check(model, input_shape=(8, 16))
    init = next(f for f in result if f.kind == "initialisation")
    assert init.evidence["sigma_w"] == pytest.approx(0.5, rel=1e-5)
    assert init.evidence["chi1"] == pytest.approx(chi1("tanh", 0.5, 0.0), rel=1e-6)


def test_replicated_backward_jacobian_matches_theory_module():
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).eval()
    x = torch.randn(2, 6)
    jac = _jacobians_by_replicas(model, x, 3)
    double = copy.deepcopy(model).double()
    reference = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda z: double(z[None])[0], x[b].double())
            for b in range(2)
        ]
    )
    torch.testing.assert_close(jac, reference)
    ours = torch.linalg.svdvals(jac).numpy()
    np.testing.assert_allclose(ours, jacobian_singular_values(model, x), rtol=1e-10)


def test_recurrent_model_through_time():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(3, 16, batch_first=True)
            with torch.no_grad():
                self.rnn.weight_hh_l0.mul_(0.2)
            self.out = nn.Linear(16, 1)

        def forward(self, x):
            return self.out(self.rnn(x)[0][:, -1])

    result = bp.check(Tiny(), input_shape=(4, 40, 3))
    (f,) = [f for f in result if f.kind == "vanishing_through_time"]
    assert f.where["layers"] == ["rnn"]
    assert f.evidence["eta"] < 1 and f.evidence["decay_at_longest_lag"] < 1e-3


def test_model_is_left_as_it_was():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 2))
    model.train()
    model[0].eval()
    sentinel = torch.full_like(model[3].weight, 7.0)
    model[3].weight.grad = sentinel
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    bp.check(model, input_shape=(4, 8))
    torch.testing.assert_close(torch.rand(3), expected_next)
    assert model.training and not model[0].training and model[1].training
    assert model[3].weight.grad is sentinel and model[0].weight.grad is None
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_batch_with_targets_and_loss_fn():
    model = DeepMLP(8, 16, 2, 3, activation="relu", init="he")
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    result = bp.check(model, (x, y), loss_fn=F.cross_entropy)
    with torch.no_grad():
        expected = float(F.cross_entropy(model(x), y))
    assert result.run.history("loss")[0] == pytest.approx(expected)


def test_check_errors():
    model = nn.Sequential(nn.Linear(8, 2))
    with pytest.raises(CheckInputError, match="input_shape"):
        bp.check(model)
    with pytest.raises(CheckInputError, match=r"shape \(4, 7\).*mat1 and mat2"):
        bp.check(model, input_shape=(4, 7))
    with pytest.raises(CheckInputError, match=r"nn\.Module"):
        bp.check("not a model", input_shape=(4, 8))
    with pytest.raises(CheckInputError, match="scalar"):
        bp.check(model, input_shape=(4, 8), loss_fn=lambda out: out)


def test_parse_shape():
    assert parse_shape("32,784") == (32, 784)
    assert parse_shape("8x3x32x32") == (8, 3, 32, 32)
    for bad in ("", "32,", "a,b", "0,3", "-1,4"):
        with pytest.raises(CheckInputError, match="input-shape"):
            parse_shape(bad)


def test_load_factory_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "zoo_models.py").write_text(
        "from torch import nn\n"
        "def good():\n    return nn.Linear(3, 2)\n"
        "def bad():\n    raise ValueError('boom\\nsecond line')\n"
        "def not_a_model():\n    return 3\n"
    )
    assert isinstance(build_model("zoo_models:good"), nn.Linear)
    assert isinstance(build_model(f"{tmp_path / 'zoo_models.py'}:good"), nn.Linear)
    cases = {
        "zoo_models": "MODULE:FACTORY",
        "no_such_module_xyz:f": "Cannot import 'no_such_module_xyz'",
        "zoo_models:missing": "no callable 'missing'",
        "zoo_models:bad": "raised ValueError: boom.",
        "zoo_models:not_a_model": "returned int",
        "nowhere.py:f": "Cannot import 'nowhere.py'",
    }
    for spec, message in cases.items():
        with pytest.raises(CheckInputError, match=message) as info:
            build_model(spec)
        assert "\n" not in str(info.value)
    assert callable(load_factory("zoo_models:good"))


def test_an_unknown_factory_lists_the_first_callables_and_counts_the_rest(tmp_path):
    names = [f"make_{i:02d}" for i in range(FACTORY_NAMES_SHOWN + 3)]
    module = tmp_path / "many_models.py"
    module.write_text("".join(f"def {n}():\n    return None\n" for n in names))
    with pytest.raises(CheckInputError) as info:
        load_factory(f"{module}:missing")
    assert ", ".join(names[:FACTORY_NAMES_SHOWN]) + " … and 3 more." in str(info.value)
    module.write_text("def only():\n    return None\n")
    with pytest.raises(CheckInputError, match=r"Callables there: only\.$"):
        load_factory(f"{module}:missing")


def test_check_input_error_is_a_backprobe_error_from_the_errors_module():
    assert issubclass(CheckInputError, BackprobeError)
    assert CheckInputError.__module__ == "backprobe.errors"


def test_a_slice_of_a_check_result_keeps_what_it_was_made_from():
    result = bp.check(DeepMLP(16, 64, 12, 4, activation="sigmoid"), input_shape=(32, 16))
    assert len(result) >= 2
    first = result[:1]
    assert type(first) is type(result) and list(first) == list(result)[:1]
    assert (first.verdict, first.run, first.seconds) == (result.verdict, result.run, result.seconds)
    assert first.worst == result[0].severity
    assert [f.kind for f in result] == [result[i].kind for i in range(len(result))]


def test_stacked_lstm_with_dropout_and_token_inputs():
    class Stacked(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(4, 8, num_layers=2, dropout=0.2, batch_first=True)
            self.out = nn.Linear(8, 1)

        def forward(self, x):
            return self.out(self.rnn(x)[0][:, -1])

    model = Stacked()
    result = bp.check(model, input_shape=(4, 6, 4))
    assert result.verdict.status == "healthy" and model.rnn.training
    assert result.run.recurrent_layers == ["rnn[l0]", "rnn[l1]"]
    tokens = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(40, 2))
    result = bp.check(tokens, torch.randint(0, 50, (4, 5)))
    assert result.jacobian is None and "not a floating-point" in result.jacobian_note
    assert not [f for f in result if f.severity != "info"]
