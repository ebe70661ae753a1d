"""User scalars (``Probe.record_scalar``): kept with recorded steps only, read back as
``history(name)`` [S] from a live probe and from the stored run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn

import backprobe as bp
from backprobe.errors import ProbeConfigError


def _loop(probe, model, steps, scalar):
    x = torch.randn(8, 4)
    with probe:
        for step in range(steps):
            loss = model(x).pow(2).mean()
            loss.backward()
            if scalar(step) is not None:
                probe.record_scalar("clip/pre_norm", scalar(step))
            probe.step(loss)
            model.zero_grad()


def test_scalars_follow_the_schedule_and_are_nan_where_absent(tmp_path):
    model = nn.Linear(4, 3)
    db = tmp_path / "runs.db"
    probe = bp.Probe(model, db=db, name="s", every=2)

    def value(step):
        return None if step == 4 else torch.tensor(float(step) + 0.5)

    _loop(probe, model, 7, value)
    expected = [0.5, 2.5, np.nan, 6.5]  # steps 0, 2, 4 (none given), 6
    assert probe.scalar_names == ["clip/pre_norm"]
    assert_allclose(probe.history("clip/pre_norm"), expected)
    run = bp.open_run(db, "s")
    assert run.scalar_names == ["clip/pre_norm"]
    assert_allclose(run.history("clip/pre_norm"), expected)


def test_python_numbers_are_accepted():
    model = nn.Linear(4, 3)
    probe = bp.Probe(model, db=None)
    _loop(probe, model, 2, lambda step: 3.0 * step)
    assert_allclose(probe.history("clip/pre_norm"), [0.0, 3.0])


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("", 1.0, "non-empty string"),
        ("grad_norm", 1.0, "built-in"),
        ("x", torch.ones(3), r"one number .* shape \(3,\)"),
    ],
)
def test_bad_scalars_are_refused(name, value, match):
    model = nn.Linear(4, 3)
    probe = bp.Probe(model, db=None).attach()
    with pytest.raises(ProbeConfigError, match=match):
        probe.record_scalar(name, value)
