"""Which layers are probed (defaults, include/exclude by glob and by type), modules that
cannot be probed (TorchScript, outputs without a floating tensor), and arguments that
are refused with a message saying what was expected."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from backprobe import BackprobeError, Probe
from backprobe.errors import ProbeConfigError, UnsupportedModuleError

from .reference import assert_matches, expected_stats


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh())
        self.decoder = nn.Sequential(nn.Linear(8, 8), nn.Sigmoid(), nn.Dropout(0.0))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.norm(self.decoder(self.encoder(x))).softmax(dim=1))


DEFAULT = [
    "encoder.0", "encoder.1", "encoder.2", "encoder.3", "decoder.0", "decoder.1", "norm",
    "head",
]  # fmt: skip


def _one_step(probe: Probe, model: nn.Module) -> None:
    with probe:
        model(torch.randn(3, 4, dtype=torch.float64)).pow(2).sum().backward()
        probe.step()


def test_default_layers_own_parameters_or_are_activations(make_probe):
    assert make_probe(Net()).layers == DEFAULT


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        ("encoder.*", None, ["encoder.0", "encoder.1", "encoder.2", "encoder.3"]),
        ("*.1", None, ["encoder.1", "decoder.1"]),
        (nn.Linear, None, ["encoder.0", "encoder.2", "decoder.0", "head"]),
        ([nn.Tanh, "head"], None, ["encoder.3", "head"]),
        (nn.Dropout, None, ["decoder.2"]),  # not a default layer, but asked for
        ("encoder", None, ["encoder"]),  # a container, when named
        (None, "decoder.*", ["encoder.0", "encoder.1", "encoder.2", "encoder.3", "norm", "head"]),
        (None, nn.ReLU, [n for n in DEFAULT if n != "encoder.1"]),
        (None, [nn.Linear, "decoder.1"], ["encoder.1", "encoder.3", "norm"]),
        (nn.Linear, "encoder.*", ["decoder.0", "head"]),
    ],
)
def test_include_and_exclude(include, exclude, expected, make_probe):
    assert make_probe(Net(), include=include, exclude=exclude).layers == expected


def test_statistics_of_selected_layers_match_reference(probe_one_step):
    model = Net().double()
    probe, rec, _ = probe_one_step(
        model,
        [torch.randn(4, 4, dtype=torch.float64)],
        loss=lambda out: out[:, 0].sum(),
        include=nn.Linear,
    )
    assert probe.layers == ["encoder.0", "encoder.2", "decoder.0", "head"]
    # gain now spans what lies between two probed Linear layers
    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info))


def test_container_layer_statistics_match_reference(probe_one_step):
    model = Net().double()
    probe, rec, _ = probe_one_step(
        model,
        [torch.randn(4, 4, dtype=torch.float64)],
        loss=lambda out: out[:, 0].sum(),
        include=["encoder", "head"],
    )
    assert probe.layers == ["encoder", "head"]
    assert np.isnan(probe.history("grad_norm")[0, 0])  # owns no parameter directly
    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info))


@pytest.mark.parametrize(
    ("include", "exclude"), [("nothing*", None), (nn.Conv2d, None), (None, "*")]
)
def test_filter_matching_nothing_names_candidates(include, exclude):
    with pytest.raises(ProbeConfigError) as info:
        Probe(Net(), db=None, include=include, exclude=exclude)
    message = str(info.value)
    assert "matched no module" in message
    assert "encoder.0" in message and "head" in message  # what could have been chosen
    assert repr(include) in message


@pytest.mark.parametrize("bad", [3, [nn.Linear, 2.5], int])
def test_filter_of_wrong_kind_is_refused(bad):
    with pytest.raises(ProbeConfigError, match="Expected layer filters"):
        Probe(Net(), db=None, include=bad)


# -- modules that cannot be probed -----------------------------------------------------------


def scripted_linear(n_in: int, n_out: int) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated
        return torch.jit.script(nn.Linear(n_in, n_out))


class WithScript(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.scripted = scripted_linear(4, 4)
        self.b = nn.Linear(4, 1)

    def forward(self, x):
        return self.b(torch.tanh(self.scripted(self.a(x))))


def test_torchscript_submodule_raises_under_error():
    with pytest.raises(UnsupportedModuleError, match=r"'scripted'.*TorchScript"):
        Probe(WithScript(), db=None, unsupported="error")


def test_torchscript_submodule_warns_and_is_skipped(make_probe):
    model = WithScript()
    with pytest.warns(UserWarning, match="'scripted'") as record:
        probe = make_probe(model, unsupported="warn")
    assert len(record) == 1
    assert "exclude=['scripted']" in str(record[0].message)
    assert probe.layers == ["a", "b"]
    with probe:
        model(torch.randn(2, 3)).sum().backward()
        probe.step()
    assert np.isfinite(probe.history("grad_norm")).all()


@pytest.mark.parametrize(
    "kwargs", [{"unsupported": "ignore"}, {"unsupported": "error", "exclude": "scripted"}]
)
def test_torchscript_submodule_silent_when_ignored_or_excluded(kwargs, make_probe):
    model = WithScript()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe = make_probe(model, **kwargs)
        with probe:
            model(torch.randn(2, 3)).sum().backward()
            probe.step()
    assert probe.layers == ["a", "b"]


def test_only_unsupported_modules_is_a_config_error():
    with pytest.raises(ProbeConfigError, match="unsupported"):
        Probe(scripted_linear(2, 2), db=None, unsupported="ignore")


class Bucketize(nn.Module):
    """Owns a parameter but outputs integer codes only."""

    def __init__(self) -> None:
        super().__init__()
        self.edges = nn.Parameter(torch.tensor([-0.5, 0.0, 0.5]))

    def forward(self, x):
        return torch.bucketize(x, self.edges.detach())


class WithCodes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.codes = Bucketize()
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        h = self.lin(x)
        return self.head(h), self.codes(h)


def _train_codes(model, probe, steps=2):
    with probe:
        for _ in range(steps):
            out, _codes = model(torch.randn(4, 3))
            out.sum().backward()
            probe.step()
            model.zero_grad()


def test_output_without_float_tensor_warns_once(make_probe):
    model = WithCodes()
    probe = make_probe(model, unsupported="warn")  # no warning yet: outputs are unseen
    with pytest.warns(UserWarning, match=r"'codes'.*no floating-point tensor") as record:
        _train_codes(model, probe)
    assert len([w for w in record if "codes" in str(w.message)]) == 1
    assert probe.layers == ["lin", "head", "codes"]  # never ran as a layer: last
    assert np.isnan(probe.history("act_mean")[:, 2]).all()
    assert np.isnan(probe.history("nonfinite")[:, 2]).all()  # not measured, not "0 bad"
    assert np.isfinite(probe.history("act_mean")[:, :2]).all()


def test_output_without_float_tensor_raises_under_error(make_probe):
    model = WithCodes()
    probe = make_probe(model, unsupported="error")
    with pytest.raises(UnsupportedModuleError, match="'codes'"):
        _train_codes(model, probe)


def test_output_without_float_tensor_silent_under_ignore(make_probe):
    model = WithCodes()
    probe = make_probe(model, unsupported="ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train_codes(model, probe)
    assert probe.steps.tolist() == [0, 1]


# -- bad arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize("not_a_model", [42, "model", None, [nn.Linear(2, 2)]])
def test_non_module_is_refused(not_a_model):
    with pytest.raises(ProbeConfigError, match=r"Expected a torch\.nn\.Module"):
        Probe(not_a_model, db=None)


def test_parameters_instead_of_model_is_refused():
    with pytest.raises(ProbeConfigError, match="Pass the model itself"):
        Probe(nn.Linear(2, 2).parameters(), db=None)


def test_model_without_parameters_is_refused():
    with pytest.raises(ProbeConfigError, match="Expected a model with parameters") as info:
        Probe(nn.Sequential(nn.ReLU(), nn.Tanh()), db=None)
    assert "Sequential" in str(info.value)


@pytest.mark.parametrize("every", [0, -3, "x", 1.5, True])
def test_bad_every_is_refused(every):
    with pytest.raises(ProbeConfigError, match="positive int") as info:
        Probe(nn.Linear(2, 2), db=None, every=every)
    assert repr(every) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"unsupported": "loud"}, "unsupported"), ({"flush_every": 0}, "flush_every")],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ProbeConfigError, match=match):
        Probe(nn.Linear(2, 2), db=None, **kwargs)


def test_config_errors_are_backprobe_and_value_errors():
    with pytest.raises(ProbeConfigError) as info:
        Probe(nn.ReLU(), db=None)
    assert isinstance(info.value, BackprobeError) and isinstance(info.value, ValueError)
