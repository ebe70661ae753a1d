"""Layers and whole models whose forward returns tuples, dicts, dataclasses, or
non-floating tensors next to floating ones: the first floating tensor is the primary
output (activation statistics); every floating output that needs a gradient contributes
to the backward signal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from .reference import assert_matches, expected_stats


@dataclass
class Pair:
    main: torch.Tensor
    aux: torch.Tensor


class TwoHeads(nn.Module):
    """A leaf layer (own parameters) with two floating outputs in a chosen container."""

    def __init__(self, wrap: str) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 5))
        self.v = nn.Parameter(torch.randn(4, 2))
        self.wrap = wrap

    def forward(self, x):
        main, aux = x @ self.w, torch.sin(x @ self.v)
        index = main.argmax(dim=1)  # an integer tensor: never a primary output
        if self.wrap == "tuple":
            return index, main, aux
        if self.wrap == "list":
            return [main, (aux, index)]
        if self.wrap == "dict":
            return {"index": index, "main": main, "aux": aux}
        return Pair(main, aux)


class Host(nn.Module):
    def __init__(self, wrap: str) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.heads = TwoHeads(wrap)
        self.out = nn.Linear(5, 1)

    def forward(self, x):
        result = self.heads(torch.tanh(self.inp(x)))
        if isinstance(result, Pair):
            main, aux = result.main, result.aux
        elif isinstance(result, dict):
            main, aux = result["main"], result["aux"]
        elif isinstance(result, list):
            main, aux = result[0], result[1][0]
        else:
            main, aux = result[1], result[2]
        return self.out(main) + aux.pow(2).sum(dim=1, keepdim=True)


def _loss(out):
    return out.pow(2).mean()


@pytest.mark.parametrize("wrap", ["tuple", "list", "dict", "dataclass"])
def test_leaf_layer_with_structured_output(wrap, probe_one_step):
    model = Host(wrap).double()
    probe, rec, _ = probe_one_step(model, [torch.randn(6, 3, dtype=torch.float64)], loss=_loss)

    assert probe.layers == ["inp", "heads", "out"]
    main = rec.outputs["heads"][0]
    assert main.shape == (6, 5)  # the reference's primary output is `main`, too
    col = 1
    np.testing.assert_allclose(probe.history("act_mean")[0, col], main.mean().item(), rtol=1e-6)
    # the backward signal counts both floating outputs: ‖(dL/dmain, dL/daux)‖
    g_main, g_aux = rec.grads["heads"]
    assert g_main.shape != g_aux.shape
    expected_signal = (g_main.pow(2).sum() + g_aux.pow(2).sum()).sqrt().item()
    np.testing.assert_allclose(probe.history("signal_norm")[0, col], expected_signal, rtol=1e-6)
    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info))


class Reporter(nn.Module):
    """A whole model (with a parameter of its own) returning a dict or a dataclass."""

    def __init__(self, as_dataclass: bool) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.tensor(1.5))
        self.body = nn.Sequential(nn.Linear(3, 6), nn.Sigmoid(), nn.Linear(6, 2))
        self.as_dataclass = as_dataclass

    def forward(self, x):
        logits = self.body(x) / self.temperature
        extra = logits.softmax(dim=1)
        return Pair(logits, extra) if self.as_dataclass else {"logits": logits, "p": extra}


@pytest.mark.parametrize("as_dataclass", [False, True], ids=["dict", "dataclass"])
def test_whole_model_with_structured_output(as_dataclass, probe_one_step):
    def loss(out):
        logits = out.main if as_dataclass else out["logits"]
        return logits.pow(2).mean() + logits[:, 0].sum()

    model = Reporter(as_dataclass).double()
    probe, rec, _ = probe_one_step(model, [torch.randn(5, 3, dtype=torch.float64)], loss=loss)

    assert probe.layers == ["body.0", "body.1", "body.2", "Reporter"]
    assert len(rec.grads["Reporter"]) == 1  # only the logits reach the loss
    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info))


class WholeModel(nn.Module):
    """No parameter of its own: probed only when included by type."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        y = self.lin(x)
        return (y.argmax(1), y, y.detach() * 2)


def test_root_model_included_by_type(probe_one_step):
    model = WholeModel().double()
    probe, rec, _ = probe_one_step(
        model,
        [torch.randn(4, 3, dtype=torch.float64)],
        loss=lambda out: out[1].pow(2).sum(),
        include=[WholeModel, nn.Linear],
    )

    assert probe.layers == ["lin", "WholeModel"]
    # the detached third output needs no gradient: only the second one is a signal
    assert len(rec.grads["WholeModel"]) == 1
    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info))
