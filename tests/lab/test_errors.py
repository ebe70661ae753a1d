"""Every mistake a user of the lab can make raises a LabConfigError (a BackprobeError and
a ValueError) that says what was expected and what was given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from backprobe.errors import BackprobeError, LabConfigError, LabDefinitionError
from backprobe.lab.experiments import Experiment, RunContext, get_experiment, register
from backprobe.lab.experiments.training import Loop, build_optimizer, train
from backprobe.lab.models import DeepMLP, RecurrentModel
from backprobe.lab.tasks import adding_task, classification_task, temporal_order_task


@dataclass(frozen=True)
class _Config:
    steps: int = 1


def _experiment(**fields: Any) -> Experiment:
    return Experiment(
        **{"name": "adding", "title": "t", "config": _Config, "run": None, "variants": {}} | fields
    )


def _omega_without_unrolled_model() -> None:
    model = nn.Linear(2, 1)
    train(
        model,
        RunContext("e", "v", 0, None, "i", "quick", {}),
        Loop(steps=1, eval_every=1, record_every=1, omega=1.0),
        build_optimizer("sgd", model.parameters(), 0.1, 0.0),
        lambda step: (torch.zeros(1, 2), torch.zeros(1, 1)),
        nn.functional.mse_loss,
        dict,
    )


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        (lambda: DeepMLP(2, 4, 1, 2, activation="gelu"), "Expected activation in .*got 'gelu'"),
        (lambda: RecurrentModel(2, 4, 1, cell="transformer"), "Expected cell in"),
        (
            lambda: RecurrentModel(2, 50, 1, cell="esn").forward_unrolled(torch.zeros(1, 3, 2)),
            "omega=0",
        ),
        (lambda: classification_task(n_train=0), "got n_train=0"),
        (lambda: adding_task(4, 1), "length >= 2"),
        (lambda: temporal_order_task(4, 20, symbols=4), "symbols 2 or 3"),
        (_omega_without_unrolled_model, "forward_unrolled.*got Linear"),
        (lambda: _experiment(config=dict), "expected a dataclass type"),
        (lambda: _experiment(variants={"v": {"stpes": 2}}), r"got unknown \['stpes'\]"),
        (lambda: _experiment(expect={"nope": []}), r"unknown \['nope'\]"),
        (lambda: register(_experiment(name=get_experiment("adding").name)), "already registered"),
    ],
)
def test_lab_mistakes_are_lab_config_errors(mistake: Callable[[], object], message: str) -> None:
    with pytest.raises(LabConfigError, match=message) as info:
        mistake()
    assert isinstance(info.value, BackprobeError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "definition",
    [
        lambda: _experiment(config=dict),
        lambda: _experiment(variants={"v": {"stpes": 2}}),
        lambda: _experiment(expect={"nope": []}),
    ],
)
def test_a_broken_experiment_definition_is_also_a_type_error(
    definition: Callable[[], object],
) -> None:
    with pytest.raises(LabDefinitionError) as info:
        definition()
    assert isinstance(info.value, TypeError) and isinstance(info.value, LabConfigError)
