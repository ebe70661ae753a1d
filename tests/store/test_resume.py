"""A stored run continued by a resumed training: same run, steps from the checkpoint on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from backprobe import Probe, open_run
from backprobe.errors import RunNotFoundError
from backprobe.store import RunDatabase


def train(probe: Probe, steps: range) -> None:
    torch.manual_seed(0)
    model = probe.model
    with probe:
        for step in steps:
            x = torch.randn(4, 3)
            loss = model(x).pow(2).mean()
            loss.backward()
            probe.step(loss)
            if step == steps.stop - 1 and steps.stop == 6:
                raise RuntimeError("killed")


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


def test_a_resumed_probe_continues_the_stored_run_from_its_first_step(tmp_path):
    db = tmp_path / "runs.db"
    with pytest.raises(RuntimeError):
        train(Probe(model(), db=db, name="r", every=1), range(6))
    first = open_run(db, "r")
    assert first.status == "failed" and first.steps.tolist() == list(range(6))

    resumed = Probe(model(), db=db, name="r", every=2, resume=first.run_id, first_step=4)
    train(resumed, range(4, 9))
    run = open_run(db, "r")
    assert run.run_id == first.run_id == resumed.run_id
    assert run.status == "finished" and run.info.error is None
    # steps 0-3 kept from the first attempt, 4 and 5 replaced, the schedule continued
    assert run.steps.tolist() == [0, 1, 2, 3, 4, 6, 8]
    assert len(RunDatabase(db).runs()) == 1
    assert np.isfinite(run.history("grad_norm")[:, [0, 2]]).all()  # Tanh: no parameters


def test_reopening_marks_the_run_running_and_drops_later_steps(tmp_path):
    db = tmp_path / "runs.db"
    with pytest.raises(RuntimeError):
        train(Probe(model(), db=db, name="r", every=1), range(6))
    store = RunDatabase(db)
    assert store.reopen_run("r", 2) == 1
    (info,) = store.runs()
    assert info.status == "running" and info.error is None and info.steps == 2


def test_resuming_an_unknown_run_names_the_known_ones(tmp_path):
    db = tmp_path / "runs.db"
    train(Probe(model(), db=db, name="r", every=1), range(2))
    with pytest.raises(RunNotFoundError, match=r"1 \(r\)"):
        Probe(model(), db=db, resume=7, first_step=2).attach()
