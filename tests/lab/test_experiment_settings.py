"""Experiment registry, typed --set overrides and the run plan."""

from __future__ import annotations

import dataclasses
import math
import typing
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
from backprobe.lab.experiments.bounds import UNBOUNDED, Bound, bounds_of


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


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("steps=0", "steps.*expects int > 0, got '0'.*default 2000"),
        ("lr=-1", "lr.*expects float > 0, got '-1'"),
        ("lr=nan", "lr.*expects float > 0, got 'nan'"),
        ("momentum=1", r"momentum.*expects float in \[0, 1\), got '1'"),
        ("clip=-0.5", "clip.*expects float >= 0"),
        ("embed=0", r"embed.*expects int > 0 \| none, got '0'"),
        ("length=1", "length.*expects int >= 2"),
        ("forget_bias=inf", "forget_bias.*expects float, got 'inf'"),
    ],
)
def test_settings_out_of_bounds_are_user_errors(setting: str, message: str) -> None:
    with pytest.raises(LabConfigError, match=message):
        parse_settings(get_experiment("adding").config, [setting], "adding")


def test_a_config_narrows_the_shared_bounds() -> None:
    config = get_experiment("temporal-order").config
    assert parse_settings(config, ["length=10", "symbols=3"]) == {"length": 10, "symbols": 3}
    with pytest.raises(LabConfigError, match=r"length.*expects int >= 10, got '9'"):
        parse_settings(config, ["length=9"])
    with pytest.raises(LabConfigError, match=r"symbols.*one of 2, 3"):
        parse_settings(config, ["symbols=4"])
    with pytest.raises(LabConfigError, match="Unknown setting 'bounds'"):
        parse_settings(config, ["bounds=1"])  # a class attribute, not a setting


def test_every_numeric_setting_has_bounds_that_its_configs_keep() -> None:
    """A new numeric setting needs an entry in BOUNDS (or UNBOUNDED), and every variant's
    full and quick config lies within the bounds."""
    for e in experiments():
        hints = typing.get_type_hints(e.config)
        bounds = bounds_of(e.config)
        for f in dataclasses.fields(e.config):
            numeric = {int, float} & set(typing.get_args(hints[f.name]) or [hints[f.name]])
            if numeric and f.name not in UNBOUNDED:
                assert f.name in bounds, (e.name, f.name)
        for overrides in e.variants.values():
            for quick in ({}, e.quick):
                config = dataclasses.asdict(make_config(e.config, overrides, quick))
                for name, bound in bounds.items():
                    value = config.get(name)
                    if isinstance(value, int | float):
                        assert bound.holds(value), (e.name, name, value)


def test_bounds_read_as_ranges() -> None:
    assert str(Bound(0, low_open=True)) == "> 0"
    assert str(Bound(2)) == ">= 2"
    assert str(Bound(0, 1, high_open=True)) == "in [0, 1)"
    assert Bound(0, 1, low_open=True).holds(1.0) and not Bound(0, 1, low_open=True).holds(0.0)
    assert not Bound(0).holds(math.inf)
