"""Gradient checkpointing, reentrant or not, measures what training without it measures:
the same statistics (1e-5) and the same layer order, nothing counted twice."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from .reference import LAYER_STATS

pytest.importorskip("transformers")

from tests.zoo.architectures import ARCHITECTURES, loss_of


def _record(make_probe, model: nn.Module, run) -> object:
    probe = make_probe(model)
    with probe, warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is missing: no warning either
        run()
        probe.step()
    return probe


def _assert_same(probe, reference) -> None:
    assert probe.layers == reference.layers
    assert probe.layer_info == reference.layer_info
    for stat in LAYER_STATS:
        np.testing.assert_allclose(
            probe.history(stat), reference.history(stat), rtol=1e-5, equal_nan=True, err_msg=stat
        )


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_checkpoint_sequential_measures_as_without(make_probe, reentrant):
    def build() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(*(m for _ in range(4) for m in (nn.Linear(6, 6), nn.Tanh())))

    x = torch.randn(5, 6, requires_grad=True)  # a reentrant checkpoint needs one
    plain = build()
    reference = _record(make_probe, plain, lambda: plain(x).pow(2).sum().backward())
    model = build()

    def run() -> None:
        checkpoint_sequential(model, 2, x, use_reentrant=reentrant).pow(2).sum().backward()

    _assert_same(_record(make_probe, model, run), reference)


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_hugging_face_gradient_checkpointing_measures_as_without(make_probe, reentrant):
    arch = ARCHITECTURES["gpt2"]
    batch = arch.batch(0)
    plain = arch.build()
    plain.train()
    reference = _record(make_probe, plain, lambda: loss_of(plain, batch, arch.loss_fn).backward())
    model = arch.build()
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    probe = _record(make_probe, model, lambda: loss_of(model, batch, arch.loss_fn).backward())
    _assert_same(probe, reference)
    assert sum(layer.role == "block" for layer in probe.layer_info) == 4


def test_a_layer_that_ran_only_without_gradient_is_named_once(make_probe):
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    probe = make_probe(model)
    x = torch.randn(2, 3)
    with probe:
        for _ in range(2):
            with torch.no_grad():
                hidden = model[1](model[0](x))
            model[2](hidden).sum().backward()
            if probe._step == 0:
                with pytest.warns(UserWarning, match="'0', '1'|0, 1"):
                    probe.step()
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    probe.step()
    assert np.isnan(probe.history("signal_norm")[:, :2]).all()
