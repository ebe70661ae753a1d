"""Experiment registry, typed --set overrides and the run plan."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import pytest

from backprobe.errors import BackprobeError, LabConfigError
from backprobe.lab.experiments import (
    experiments,
    get_experiment,
    make_config,
    parse_settings,
    plan,
)


@dataclass(frozen=True)
class _Config:
    steps: int = 10
    lr: float = 0.1
    clip: float | None = None
    cell: Literal["rnn", "lstm"] = "rnn"
    verbose: bool = False
    name: str = "x"


def test_settings_are_parsed_by_field_type() -> None:
    parsed = parse_settings(
        _Config,
        ["steps=2_000", "lr=1e-3", "clip=none", "cell=lstm", "verbose=yes", "name=a=b"],
    )
    assert parsed == {
        "steps": 2000,
        "lr": 1e-3,
        "clip": None,
        "cell": "lstm",
        "verbose": True,
        "name": "a=b",
    }
    assert parse_settings(_Config, ["clip=0.5"]) == {"clip": 0.5}
    assert isinstance(parse_settings(_Config, ["lr=1"])["lr"], float)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("steps=1.5", "steps.*expects int, got '1.5'"),
        ("lr=fast", "lr.*expects float"),
        ("cell=transformer", "one of 'rnn', 'lstm'"),
        ("verbose=maybe", "verbose.*bool"),
        ("clip=", "float \\| none"),
        ("steps", "key=value"),
        ("stpes=3", "Unknown setting 'stpes'.*steps"),
    ],
)
def test_bad_settings_are_user_errors(setting: str, message: str) -> None:
    with pytest.raises(LabConfigError, match=message) as info:
        parse_settings(_Config, [setting], "demo")
    assert isinstance(info.value, BackprobeError)


def test_every_registered_experiment_is_consistent() -> None:
    """Each variant (with and without the quick overrides) makes a valid config, the
    expectations name metrics the table shows, and names are unique."""
    items = experiments()
    names = [e.name for e in items]
    assert len(names) == len(set(names)) >= 9
    for e in items:
        assert e.metrics, e.name
        for overrides in e.variants.values():
            for quick in ({}, e.quick):
                config = make_config(e.config, quick, overrides)
                assert dataclasses.is_dataclass(config)
        for variant, expectations in e.expect.items():
            assert variant in e.variants
            assert all(x.metric in e.metrics for x in expectations), (e.name, variant)


def test_plan_layers_defaults_quick_variant_and_settings() -> None:
    adding = get_experiment("adding")
    jobs = plan(adding, settings=["hidden=7"], seeds=3, variants=["lstm-T200"], quick=True)
    assert [(j.variant, j.seed) for j in jobs] == [("lstm-T200", s) for s in range(3)]
    config = jobs[0].config
    assert config["hidden"] == 7  # the user's setting wins
    assert config["length"] == adding.quick["length"]  # quick wins over the variant
    assert config["steps"] == adding.quick["steps"]  # and over the defaults
    assert config["cell"] == "lstm"  # the variant over the defaults
    assert jobs[0].profile == "quick+set"
    assert len({j.invocation for j in jobs}) == 1
    full = plan(adding)
    assert len(full) == len(adding.variants) and full[0].profile == "full"


def test_unknown_names_are_user_errors() -> None:
    with pytest.raises(LabConfigError, match=r"No lab experiment 'addin'.*adding"):
        get_experiment("addin")
    with pytest.raises(LabConfigError, match=r"no variant 'lstm'.*lstm-T100"):
        plan(get_experiment("adding"), variants=["lstm"])
    with pytest.raises(LabConfigError, match="seeds"):
        plan(get_experiment("adding"), seeds=0)
