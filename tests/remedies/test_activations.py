"""swap_activations_: nested modules, subclasses, instances and factories; functional
calls reported with their line, module attributes called by name not reported."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backprobe.errors import RemedyError
from backprobe.remedies import swap_activations_


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.sigmoid = nn.Sigmoid()  # a module attribute named like the function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sigmoid(self.fc(x))  # calls the module: swappable


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # sigmoid( in a comment is not a call
        g = torch.sigmoid(self.fc(x))
        return x * g + nn.functional.sigmoid(x) + x.sigmoid()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), nn.Sequential(Block(), nn.Sigmoid())])
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.gate(x)


def test_nested_modules_are_swapped_and_the_model_still_runs():
    model = Net()
    x = torch.randn(3, 4)
    with pytest.warns(UserWarning, match="cannot be swapped"):
        report = swap_activations_(model, from_=nn.Sigmoid, to=nn.ReLU)
    assert report.swapped == ["blocks.0.sigmoid", "blocks.1.0.sigmoid", "blocks.1.1"]
    assert not any(isinstance(m, nn.Sigmoid) for m in model.modules())
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 3
    assert model(x).shape == (3, 4)


def test_functional_calls_are_reported_with_their_lines():
    with pytest.warns(UserWarning):
        report = swap_activations_(Net(), from_=nn.Sigmoid, to=nn.ReLU)
    calls = report.functional
    assert {c.cls for c in calls} == {"Gate"}  # not Block: self.sigmoid(…) is a module
    assert [c.code.strip() for c in calls] == [
        "g = torch.sigmoid(self.fc(x))",
        "return x * g + nn.functional.sigmoid(x) + x.sigmoid()",
    ]
    assert all(c.module == "gate" and c.file.endswith("test_activations.py") for c in calls)
    source = open(calls[0].file).read().splitlines()  # noqa: SIM115
    assert source[calls[0].line - 1].strip() == calls[0].code.strip()


def test_subclasses_instances_and_factories():
    class MySigmoid(nn.Sigmoid):
        pass

    model = nn.Sequential(nn.Linear(2, 2), MySigmoid(), nn.Tanh())
    report = swap_activations_(model, from_=(nn.Sigmoid, nn.Tanh), to=nn.LeakyReLU(0.2))
    assert report.swapped == ["1", "2"]
    assert model[1] is not model[2] and model[1].negative_slope == 0.2
    swap_activations_(model, from_=nn.LeakyReLU, to=lambda: nn.GELU(approximate="tanh"))
    assert model[2].approximate == "tanh"


def test_nothing_to_swap_is_an_empty_report_without_warning():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    report = swap_activations_(model, from_=nn.Sigmoid, to=nn.ReLU, warn=True)
    assert report.swapped == [] and report.functional == []


def test_errors():
    with pytest.raises(RemedyError, match="Module class"):
        swap_activations_(nn.Sequential(nn.ReLU()), from_=torch.sigmoid)  # type: ignore[arg-type]
    with pytest.raises(RemedyError, match="to build an"):
        swap_activations_(nn.Sequential(nn.Sigmoid()), to=lambda: torch.relu)
    with pytest.raises(RemedyError, match="itself"):
        swap_activations_(nn.Sigmoid())
