"""Runs whose process ends badly: killed with SIGKILL, never closed, crashed; and two
processes writing one database at once. Each case runs a real Python subprocess."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from backprobe.store import RunDatabase, open_run

from .helpers import LAYERS

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and pids")

#: A tiny training loop; the script's argv: db path, run name, then a mode.
TRAIN = textwrap.dedent(
    """
    import os, sys, time
    import torch
    from torch import nn
    import backprobe as bp

    db, name, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    probe = bp.Probe(model, every={every}, db=db, name=name, flush_every={flush_every})

    def train(steps):
        for step in range(steps):
            loss = model(torch.randn(16, 4)).pow(2).mean()
            loss.backward()
            probe.step(loss)
            with torch.no_grad():  # plain SGD (creating a torch.optim optimizer is slow)
                for p in model.parameters():
                    p -= 0.05 * p.grad
                    p.grad = None
            print(step, flush=True)
            if mode == "forever":
                time.sleep(0.01)

    if mode == "forever":           # until killed
        probe.attach()
        train(10**9)
    elif mode == "no-close":        # the interpreter exits normally, probe never closed
        probe.attach()
        train(5)
    elif mode == "crash":           # an unhandled exception ends the interpreter
        probe.attach()
        train(5)
        raise RuntimeError("crashed on purpose")
    elif mode == "with":            # the intended use, started on a signal from the parent
        print("ready", flush=True)
        while not os.path.exists(db + ".go"):
            time.sleep(0.001)
        with probe:
            train(int(sys.argv[4]))
    """
)


def _script(tmp_path, flush_every=2.0, every="1"):
    path = tmp_path / "train.py"
    path.write_text(TRAIN.format(flush_every=flush_every, every=every))
    return path


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run_info(db, name):
    with RunDatabase(db) as database:
        return next(r for r in database.runs() if r.name == name)


def test_sigkill_keeps_everything_up_to_the_last_flush(tmp_path):
    db = tmp_path / "runs.db"
    script = _script(tmp_path, flush_every=0.05)
    child = subprocess.Popen(
        [sys.executable, str(script), str(db), "killed", "forever"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        printed = -1
        deadline = time.monotonic() + 60
        while printed < 30:
            line = child.stdout.readline()
            assert line, f"child ended early: {child.wait()} {child.stderr.read()}"
            printed = int(line)
            assert time.monotonic() < deadline, "child too slow"
        # the child keeps training while more than a flush interval passes
        time.sleep(1.0)
        assert child.poll() is None, child.stderr.read()
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
        last_printed = max([printed, *(int(x) for x in child.stdout.read().split())])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()

    assert last_printed > 30  # it did run on during the wait
    # the database opens fine and tells the run was interrupted
    info = _run_info(db, "killed")
    assert info.status == "interrupted"
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    run = open_run(db, "killed")
    assert run.status == "interrupted"
    assert run.layers == LAYERS
    steps = run.steps
    # a contiguous prefix: each flush writes whole steps in one transaction
    assert_array_equal(steps, np.arange(steps.size))
    k = int(steps[-1])
    assert k >= printed  # everything printed before the wait was flushed during it
    assert k <= last_printed + 1  # a step may be recorded but not yet printed
    s = steps.size
    assert run.history("loss").shape == (s,)
    assert run.history("grad_norm").shape == (s, len(LAYERS))
    assert run.history("first_nonfinite").shape == (s, 2)
    assert run.info.steps == s
    for stat in ("grad_norm", "weight_norm", "act_std"):  # every stat has every step
        assert not np.any(np.isnan(run.history(stat)[:, 0])), stat
    assert np.all(np.isfinite(run.history("loss")))


@pytest.mark.parametrize("every", ["1", "lambda step: step == 0"], ids=["recorded", "unrecorded"])
@pytest.mark.parametrize(
    ("mode", "status", "rc"),
    [("no-close", "finished", 0), ("crash", "failed", 1)],
)
def test_atexit_closes_a_run_left_open(tmp_path, mode, status, rc, every):
    """Also when the last steps are unrecorded: the last one's sentinel row, still on its
    way to the host at exit (read at the next step), is stored before the run closes."""
    db = tmp_path / "runs.db"
    script = _script(tmp_path, flush_every=60.0, every=every)  # only the exit handler flushes
    done = subprocess.run(
        [sys.executable, str(script), str(db), mode, mode],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert done.returncode == rc, done.stderr
    if mode == "crash":
        assert "crashed on purpose" in done.stderr
    info = _run_info(db, mode)
    assert info.status == status
    if mode == "crash":  # the unhandled exception is kept with the run
        assert "crashed on purpose" in info.error
        assert "closed at exit" in info.error
    else:  # a clean exit is no error
        assert info.error is None
    run = open_run(db, mode)
    assert_array_equal(run.steps, np.arange(5) if every == "1" else [0])
    assert_array_equal(run.sentinel.steps, np.arange(5))
    assert np.all(np.isfinite(run.sentinel.field("grad_norm")))
    assert run.layers == LAYERS


def test_two_processes_write_one_new_database_at_once(tmp_path):
    db = tmp_path / "shared" / "runs.db"
    script = _script(tmp_path, flush_every=0.01)  # many small interleaved transactions
    steps = 40
    children = [
        subprocess.Popen(
            [sys.executable, str(script), str(db), name, "with", str(steps)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for name in ("left", "right")
    ]
    go = tmp_path / "shared" / "runs.db.go"
    try:
        # both have imported torch; let them create the database at the same moment
        for child in children:
            assert child.stdout.readline() == "ready\n", child.communicate()[1]
        assert not db.exists()
        go.parent.mkdir()
        go.touch()
        errors = [child.communicate(timeout=120)[1] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()
    assert [child.returncode for child in children] == [0, 0], errors
    with RunDatabase(db) as database:
        infos = database.runs()
    assert sorted(r.name for r in infos) == ["left", "right"]
    assert {r.status for r in infos} == {"finished"}
    for name in ("left", "right"):
        run = open_run(db, name)
        assert_array_equal(run.steps, np.arange(steps))
        assert run.layers == LAYERS
        assert run.history("grad_norm").shape == (steps, len(LAYERS))
        assert np.all(np.isfinite(run.history("loss")))
