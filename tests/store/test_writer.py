"""RunWriter: records are batched in memory and written at most ``flush_every`` seconds
later (background thread), when a reader asks, on detach and on close; the run's status
says how it ended."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import backprobe as bp
from backprobe.store import open_run
from backprobe.store.view import LAYER_SERIES, STEP_SERIES

from .helpers import LAYERS, count_rows, tiny_mlp, train_steps, wait_until

#: Stored series per recorded step: the per-layer series, loss and first_nonfinite.
SERIES_PER_STEP = len(LAYER_SERIES) + len(STEP_SERIES)


def _status(db, run_id):
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT status, error FROM runs WHERE id=?", (run_id,)).fetchone()
    finally:
        conn.close()


@pytest.mark.parametrize("trigger", ["detach", "history", "steps", "close"])
def test_nothing_is_written_before_a_flush(tmp_path, trigger):
    db = tmp_path / "runs.db"
    model = tiny_mlp()
    probe = bp.Probe(model, db=db, name="batched", flush_every=60.0)
    try:
        train_steps(probe, model, 3)
        run_id = probe.run_id
        # the run row exists at once (so `backprobe runs` lists it), its data does not
        assert _status(db, run_id) == ("running", None)
        assert count_rows(db, "series", run_id) == 0
        assert count_rows(db, "layers", run_id) == 0
        if trigger == "detach":
            probe.detach()
        elif trigger == "history":
            assert probe.history("loss").shape == (3,)
        elif trigger == "steps":
            assert_array_equal(probe.steps, [0, 1, 2])
        else:
            probe.close()
        assert count_rows(db, "series", run_id) == 3 * SERIES_PER_STEP
        assert count_rows(db, "layers", run_id) == len(LAYERS)
    finally:
        probe.close()


def test_batches_accumulate_across_flushes(tmp_path):
    db = tmp_path / "runs.db"
    model = tiny_mlp()
    probe = bp.Probe(model, db=db, name="batches", flush_every=60.0)
    with probe:
        train_steps(probe, model, 2)
        probe.detach()
        assert count_rows(db, "series", probe.run_id) == 2 * SERIES_PER_STEP
        train_steps(probe, model, 3)  # re-attaches
        assert count_rows(db, "series", probe.run_id) == 2 * SERIES_PER_STEP
    assert count_rows(db, "series", probe.run_id) == 5 * SERIES_PER_STEP
    run = open_run(db, probe.run_id)
    assert_array_equal(run.steps, np.arange(5))
    assert run.layers == LAYERS
    assert np.all(np.isfinite(run.history("loss")))


def test_background_thread_flushes_without_being_asked(tmp_path):
    db = tmp_path / "runs.db"
    model = tiny_mlp()
    probe = bp.Probe(model, db=db, name="background", flush_every=0.2)
    try:
        train_steps(probe, model, 4)
        expected = 4 * SERIES_PER_STEP
        # nothing calls into the probe while we wait: only the flush thread can write
        assert wait_until(lambda: count_rows(db, "series", probe.run_id) == expected), count_rows(
            db, "series", probe.run_id
        )
        assert count_rows(db, "layers", probe.run_id) == len(LAYERS)
        # and it keeps doing so for later steps
        train_steps(probe, model, 2)
        assert wait_until(
            lambda: count_rows(db, "series", probe.run_id) == expected + 2 * SERIES_PER_STEP
        )
        assert _status(db, probe.run_id) == ("running", None)
    finally:
        probe.close()


def test_normal_exit_marks_the_run_finished(tmp_path):
    db = tmp_path / "runs.db"
    model = tiny_mlp()
    probe = bp.Probe(model, db=db, name="ok")
    with probe:
        train_steps(probe, model, 2)
    assert not probe.attached
    assert _status(db, probe.run_id) == ("finished", None)
    assert open_run(db, "ok").status == "finished"


def test_exception_inside_with_marks_the_run_failed(tmp_path):
    db = tmp_path / "runs.db"
    model = tiny_mlp()
    probe = bp.Probe(model, db=db, name="boom")
    with pytest.raises(ValueError, match="loss went sideways"), probe:
        train_steps(probe, model, 3)
        raise ValueError("loss went sideways")
    assert not probe.attached
    status, error = _status(db, probe.run_id)
    assert status == "failed"
    assert error == "ValueError: loss went sideways"
    run = open_run(db, "boom")
    assert run.status == "failed"
    assert run.info.error == error
    assert_array_equal(run.steps, [0, 1, 2])  # what was recorded before the error is kept


def test_explicit_close_with_status(tmp_path):
    db = tmp_path / "runs.db"
    model = tiny_mlp()
    probe = bp.Probe(model, db=db, name="closed")
    train_steps(probe, model, 1)
    probe.close("failed", "diverged")
    probe.close()  # twice is harmless and does not overwrite the status
    assert _status(db, probe.run_id) == ("failed", "diverged")
    with pytest.raises(bp.BackprobeError, match="closed"):
        probe.attach()


def test_reading_a_closed_probe_reads_the_database(tmp_path):
    db = tmp_path / "runs.db"
    model = tiny_mlp()
    probe = bp.Probe(model, db=db, name="reread")
    with probe:
        train_steps(probe, model, 3)
    assert_array_equal(probe.steps, [0, 1, 2])
    assert probe.layer_info == open_run(db, "reread").layer_info
