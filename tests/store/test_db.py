"""The run database: round trip through SQLite, schema, refusing files that are not
ours (and leaving them untouched), run lookup and the errors a reader can get."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

import backprobe as bp
from backprobe.diagnose.storage import save_findings
from backprobe.errors import BackprobeError, RunDatabaseError, RunNotFoundError
from backprobe.report.text import print_summary
from backprobe.store import ALL_SERIES, LayerInfo, RunDatabase, open_run
from backprobe.store.db import APPLICATION_ID, SCHEMA_VERSION
from backprobe.store.writer import RunWriter

from .helpers import LAYERS, record, tiny_mlp
from .read_only import read_only_folder

STEPS = 9
EVERY = 2
RECORDED = np.arange(0, STEPS, EVERY)  # 0, 2, 4, 6, 8

# -- round trip -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    """The same seeded training recorded to a database and kept in memory."""
    db = tmp_path_factory.mktemp("roundtrip") / "runs.db"
    record(db, name="warmup", steps=2, seed=1)  # so that the run under test is not id 1
    stored_probe = record(db, name="roundtrip", steps=STEPS, every=EVERY, config={"lr": 0.05})
    memory_probe = record(None, name="roundtrip", steps=STEPS, every=EVERY)
    return db, stored_probe, memory_probe


def test_round_trip_by_id_and_name_match_the_live_probe(roundtrip):
    db, probe, memory = roundtrip
    assert probe.run_id == 2 and memory.run_id is None
    by_id, by_name = open_run(db, probe.run_id), open_run(db, "roundtrip")
    assert by_id.id == by_name.id == probe.run_id
    for view in (by_id, by_name, memory):
        assert view.layers == probe.layers == LAYERS
        assert view.layer_info == by_id.layer_info
        assert_array_equal(view.steps, RECORDED)
    assert_array_equal(probe.steps, RECORDED)
    for stat in ALL_SERIES:
        expected = probe.history(stat)
        # the overheads are timings: the in-memory probe's own run measured its own
        timed = stat in ("overhead", "sentinel_overhead")
        views = (by_id, by_name) if timed else (by_id, by_name, memory)
        for view in views:
            got = view.history(stat)
            assert got.shape == expected.shape, stat
            assert got.dtype == np.float64, stat
            assert_allclose(got, expected, rtol=1e-6, equal_nan=True, err_msg=stat)


def test_round_trip_values_are_meaningful(roundtrip):
    """Guards the comparison above against comparing empty or all-NaN arrays."""
    db, _, _ = roundtrip
    run = open_run(db, "roundtrip")
    s = RECORDED.size
    assert run.history("loss").shape == (s,)
    assert run.history("first_nonfinite").shape == (s, 2)
    grad = run.history("grad_norm")
    assert grad.shape == (s, len(LAYERS))
    assert np.all(np.isfinite(grad[:, [0, 2]])) and np.all(grad[:, [0, 2]] > 0)
    assert np.all(np.isnan(grad[:, 1]))  # Tanh owns no parameters
    assert np.all(np.isfinite(run.history("loss")))
    # float32 storage: what comes back is exactly representable in float32
    assert_array_equal(grad[:, 0].astype(np.float32).astype(np.float64), grad[:, 0])
    assert [(lay.type, lay.family, lay.n_params) for lay in run.layer_info] == [
        ("Linear", "", 40),
        ("Tanh", "tanh", 0),
        ("Linear", "", 9),
    ]


def test_run_metadata_is_stored(roundtrip):
    db, _, _ = roundtrip
    run = open_run(db, "roundtrip")
    assert run.name == "roundtrip"
    assert run.status == "finished"
    assert run.info.error is None
    assert run.info.steps == RECORDED.size
    assert run.info.layers == len(LAYERS)
    assert run.info.config["lr"] == 0.05
    assert str(EVERY) in str(run.info.config["probe"]["every"])
    assert run.info.model["class"] == "Sequential"
    assert run.info.model["parameters"] == 49


def test_name_resolves_to_the_newest_run_of_that_name(tmp_path):
    db = tmp_path / "runs.db"
    first = record(db, name="dup", steps=2)
    second = record(db, name="dup", steps=3)
    assert first.run_id != second.run_id
    assert open_run(db, "dup").id == second.run_id
    assert open_run(db, first.run_id).steps.size == 2
    assert open_run(db, str(first.run_id)).steps.size == 2


# -- schema -----------------------------------------------------------------------------------


def test_schema_identifies_the_file(tmp_path):
    db = tmp_path / "runs.db"
    record(db, steps=1)
    conn = sqlite3.connect(db)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert meta["application"] == "backprobe"
        assert meta["schema_version"] == str(SCHEMA_VERSION)
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID == 0x42505242
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"meta", "runs", "layers", "series", "time_profiles", "findings"} <= tables
    finally:
        conn.close()


def test_create_makes_missing_folders(tmp_path):
    db = tmp_path / "a" / "b" / "runs.db"
    RunDatabase(db, create=True).close()
    assert db.is_file()
    RunDatabase(db).close()  # and it reads back as ours


def test_reopening_for_writing_keeps_existing_runs(tmp_path):
    db = tmp_path / "runs.db"
    record(db, name="one", steps=2)
    record(db, name="two", steps=3)
    with RunDatabase(db, create=True) as database:
        assert [(r.id, r.name, r.steps) for r in database.runs()] == [(1, "one", 2), (2, "two", 3)]


def test_concurrent_creation_of_one_new_file(tmp_path):
    """Several connections creating the same new file at once all succeed.

    Regression: the checks read the application id and the table list in two separate
    snapshots (one could see the other's schema appear in between and call the file
    foreign), and switching to WAL answered "database is locked" without waiting.
    """
    for trial in range(25):
        db = tmp_path / f"runs{trial}.db"
        barrier = threading.Barrier(4)
        failures: list[str] = []

        def create(db=db, barrier=barrier, failures=failures):
            barrier.wait()
            try:
                with RunDatabase(db, create=True) as database:
                    database.create_run("x", {}, {})
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=create) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, f"trial {trial}: {failures}"
        with RunDatabase(db) as database:
            assert len(database.runs()) == 4


# -- files that are not ours --------------------------------------------------------------


def _corrupt(path):
    path.write_bytes(random.Random(0).randbytes(8192))


def _foreign(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users(name) VALUES ('ada')")
    conn.commit()
    conn.close()


def _newer(path):
    RunDatabase(path, create=True).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    assert not path.with_name(path.name + "-wal").exists()  # all in the main file


def _no_version(path):
    RunDatabase(path, create=True).close()
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM meta WHERE key='schema_version'")
    conn.commit()
    conn.close()


BAD_FILES = {
    "corrupt": (_corrupt, "not a backprobe run database"),
    "foreign": (_foreign, "foreign SQLite database"),
    "newer-schema": (_newer, f"schema {SCHEMA_VERSION + 1}, newer"),
    "no-version": (_no_version, "no schema version"),
}


@pytest.fixture(params=sorted(BAD_FILES))
def bad_file(request, tmp_path):
    make, message = BAD_FILES[request.param]
    path = tmp_path / "runs.db"
    make(path)
    return path, path.read_bytes(), message


@pytest.mark.parametrize("create", [False, True], ids=["read", "write"])
def test_bad_file_is_refused_and_left_untouched(bad_file, create):
    path, before, message = bad_file
    with pytest.raises(RunDatabaseError, match=message) as err:
        RunDatabase(path, create=create)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == before


def test_bad_file_is_refused_by_open_run_and_probe(bad_file):
    path, before, message = bad_file
    with pytest.raises(RunDatabaseError, match=message):
        open_run(path, 1)
    probe = bp.Probe(tiny_mlp(), db=path)
    with pytest.raises(RunDatabaseError, match=message):
        probe.attach()
    assert not probe.attached
    assert path.read_bytes() == before


def test_empty_file_is_refused_for_reading(tmp_path):
    path = tmp_path / "runs.db"
    path.touch()
    with pytest.raises(RunDatabaseError, match="it is empty"):
        RunDatabase(path)
    with pytest.raises(RunDatabaseError, match="it is empty"):
        open_run(path, 1)
    assert path.read_bytes() == b""


def test_empty_file_is_initialised_for_writing(tmp_path):
    path = tmp_path / "runs.db"
    path.touch()
    probe = record(path, name="into-empty", steps=2)
    assert path.stat().st_size > 0
    run = open_run(path, "into-empty")
    assert run.id == probe.run_id
    assert run.steps.size == 2


def test_missing_file_for_reading_is_an_error_and_not_created(tmp_path):
    path = tmp_path / "nowhere" / "runs.db"
    with pytest.raises(RunDatabaseError, match="No run database at"):
        RunDatabase(path)
    with pytest.raises(RunDatabaseError, match="No run database at"):
        open_run(path, "x")
    assert not path.parent.exists()


@pytest.mark.parametrize("create", [False, True], ids=["read", "write"])
def test_folder_is_refused(tmp_path, create):
    with pytest.raises(RunDatabaseError, match="is a folder"):
        RunDatabase(tmp_path, create=create)
    assert list(tmp_path.iterdir()) == []


def test_library_errors_do_not_speak_of_command_line_options(tmp_path, bad_file):
    """A Python user cannot "pass --db": the library says what to do in its own terms."""
    messages = []
    for path in (tmp_path / "missing.db", bad_file[0]):
        with pytest.raises(RunDatabaseError) as err:
            RunDatabase(path)
        messages.append(str(err.value))
    assert not [m for m in messages if "--db" in m or "BACKPROBE_DB" in m], messages


# -- read-only storage -----------------------------------------------------------------------


@pytest.fixture
def stored_folder(tmp_path):
    """A folder holding runs.db with one finished run "kept" of 3 steps."""
    folder = tmp_path / "runs"
    record(folder / "runs.db", name="kept", steps=3)
    return folder


def test_a_database_on_read_only_storage_is_listed_and_read(stored_folder):
    """Regression: SQLite could not make its WAL index beside the file, and the reader
    called a valid database "not a backprobe run database"."""
    assert sorted(p.name for p in stored_folder.iterdir()) == ["runs.db"]
    with read_only_folder(stored_folder) as folder:
        with RunDatabase(folder / "runs.db", read_only=True) as database:
            assert [(r.name, r.status, r.steps) for r in database.runs()] == [
                ("kept", "finished", 3)
            ]
        read_there = open_run(folder / "runs.db", "kept").history("grad_norm")
    assert_array_equal(read_there, open_run(stored_folder / "runs.db", "kept").history("grad_norm"))


@pytest.mark.parametrize(
    "write",
    [
        lambda folder: RunWriter(folder / "runs.db", "more", {}, {}),
        lambda folder: RunWriter(folder / "new.db", "more", {}, {}),
        lambda folder: RunWriter(folder / "sub" / "runs.db", "more", {}, {}),
        lambda folder: save_findings(folder / "runs.db", "kept", []),
    ],
    ids=["existing-file", "new-file", "new-folder", "findings"],
)
def test_writing_to_read_only_storage_is_one_line_naming_the_path(stored_folder, write):
    before = (stored_folder / "runs.db").read_bytes()
    with read_only_folder(stored_folder) as folder:
        with pytest.raises(RunDatabaseError, match="read-only") as err:
            write(folder)
        assert str(folder) in str(err.value)
        assert "writable" in str(err.value) and "\n" not in str(err.value)
    assert (stored_folder / "runs.db").read_bytes() == before


def test_readers_open_the_file_read_only(stored_folder):
    """Through the read-only URI even root cannot write: a reader never changes a file."""
    with (
        RunDatabase(stored_folder / "runs.db", read_only=True) as database,
        pytest.raises(sqlite3.OperationalError, match="readonly"),
    ):
        database.conn.execute("DELETE FROM runs")
    with RunDatabase(stored_folder / "runs.db") as database:
        assert [r.name for r in database.runs()] == ["kept"]


def test_the_database_closes_at_the_end_of_a_with_block(stored_folder):
    with RunDatabase(stored_folder / "runs.db") as database:
        assert database.runs()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        database.conn.execute("SELECT 1")


def test_errors_are_backprobe_errors():
    assert issubclass(RunDatabaseError, BackprobeError)
    assert issubclass(RunNotFoundError, BackprobeError)
    assert issubclass(RunNotFoundError, LookupError)


# -- finding runs and reading them ----------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    db = tmp_path_factory.mktemp("two") / "runs.db"
    record(db, name="first", steps=4)
    record(db, name="second", steps=4)
    return db


@pytest.mark.parametrize("run", [99, "99", "nosuchrun"])
def test_unknown_run_names_the_latest_runs(two_runs, run):
    with pytest.raises(RunNotFoundError) as err:
        open_run(two_runs, run)
    message = str(err.value)
    assert repr(str(run)) in message or repr(run) in message
    assert "1 (first)" in message and "2 (second)" in message
    assert "RunDatabase(path).runs()" in message and "backprobe runs" not in message


def test_unknown_run_in_an_empty_database(tmp_path):
    db = tmp_path / "runs.db"
    RunDatabase(db, create=True).close()
    with pytest.raises(RunNotFoundError, match="latest runs: none"):
        open_run(db, 1)


def test_unknown_statistic(two_runs):
    run = open_run(two_runs, "first")
    with pytest.raises(BackprobeError, match="Unknown statistic 'grad_nrom'") as err:
        run.history("grad_nrom")
    assert "grad_norm" in str(err.value)  # lists what is expected


def test_step_not_recorded(two_runs):
    run = open_run(two_runs, "first")
    assert run.step_index(None) == 3
    assert run.step_index(2) == 2
    with pytest.raises(BackprobeError, match="Step 7 was not recorded"):
        run.step_index(7)
    with pytest.raises(BackprobeError, match="Step 7 was not recorded"):
        print_summary(run, step=7)


def test_run_without_steps(tmp_path):
    db = tmp_path / "runs.db"
    probe = bp.Probe(tiny_mlp(), db=db, name="empty")
    with probe:
        pass
    run = open_run(db, "empty")
    assert run.status == "finished"
    assert run.steps.size == 0
    assert run.history("grad_norm").shape == (0, 0)
    with pytest.raises(BackprobeError, match="no recorded step"):
        run.step_index(None)


def test_runs_reports_statuses(tmp_path):
    db = tmp_path / "runs.db"
    record(db, name="done", steps=3)
    failing = bp.Probe(tiny_mlp(), db=db, name="broken")
    with pytest.raises(RuntimeError), failing:
        raise RuntimeError("boom")
    live = bp.Probe(tiny_mlp(), db=db, name="live").attach()
    try:
        # a run marked running whose process is gone, and one on another host
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        conn = sqlite3.connect(db)
        with conn:
            conn.execute(
                "INSERT INTO runs(name, status, created, updated, pid, host) "
                "VALUES ('dead', 'running', 0, 0, ?, (SELECT host FROM runs WHERE id=1))",
                (dead.pid,),
            )
            conn.execute(
                "INSERT INTO runs(name, status, created, updated, pid, host) "
                "VALUES ('remote', 'running', 0, 0, ?, 'some-other-host')",
                (dead.pid,),
            )
        conn.close()
        with RunDatabase(db) as database:
            infos = database.runs()
        assert [(r.id, r.name, r.status) for r in infos] == [
            (1, "done", "finished"),
            (2, "broken", "failed"),
            (3, "live", "running"),
            (4, "dead", "interrupted"),
            (5, "remote", "running"),
        ]
        assert infos[0].steps == 3 and infos[0].layers == len(LAYERS)
        assert infos[1].error == "RuntimeError: boom"
    finally:
        live.close()


def test_schema_1_files_are_upgraded_in_place_and_keep_their_runs(tmp_path):
    """Schema 1 keyed time profiles by layer index; opening upgrades the file to the
    current schema (profiles by sub-layer name and kind) and keeps every run."""
    db = tmp_path / "runs.db"
    _roundtrip_run(db)
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE time_profiles")
    conn.execute(
        "CREATE TABLE time_profiles (run_id INTEGER NOT NULL, layer_idx INTEGER NOT NULL, "
        "step INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (run_id, layer_idx, step)) "
        "WITHOUT ROWID"
    )
    conn.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with RunDatabase(db) as database:
        version = database.conn.execute(
            "SELECT value FROM meta WHERE key='schema_version'"
        ).fetchone()[0]
        columns = [r[1] for r in database.conn.execute("PRAGMA table_info(time_profiles)")]
        assert len(database.runs()) == 1
    assert version == str(SCHEMA_VERSION)
    assert columns == ["run_id", "name", "kind", "step", "data"]
    assert open_run(db, 1).history("loss").shape == (3,)


def _roundtrip_run(db):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())
    with bp.Probe(model, db=db, name="old") as probe:
        for _ in range(3):
            loss = model(torch.ones(1, 2)).sum()
            loss.backward()
            probe.step(loss)


def test_layer_roles_round_trip_through_the_run_database(tmp_path):
    """role, ran, shared_with and block are stored with the layers and read back."""
    layers = [
        LayerInfo(0, "wte", "Embedding", "", 8, False, shared_with="head"),
        LayerInfo(1, "blocks.0.fc", "Linear", "", 4, False, block="blocks.0"),
        LayerInfo(2, "blocks.0", "Block", "", 0, False, role="block"),
        LayerInfo(3, "attn.out_proj", "Linear", "", 4, False, role="params", ran=False),
        LayerInfo(4, "head", "Linear", "", 8, False, shared_with="wte"),
    ]
    db = tmp_path / "runs.db"
    writer = RunWriter(db, "roles", {}, {})
    writer.set_layers(layers)
    writer.append(0, {"loss": np.array([1.0]), "signal_norm": np.ones(5)})
    writer.close("finished")
    assert open_run(db, "roles").layer_info == layers


def test_schema_2_files_get_layer_roles_with_their_defaults(tmp_path):
    """Schema 2 had no role columns: a reader upgrades the file in place, and the old
    runs' layers read as plain layers that ran, untied, outside any block."""
    db = tmp_path / "runs.db"
    _roundtrip_run(db)
    conn = sqlite3.connect(db)
    for column in ("role", "ran", "shared_with", "block"):
        conn.execute(f"ALTER TABLE layers DROP COLUMN {column}")
    conn.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    run = open_run(db, "old")
    assert [(x.role, x.ran, x.shared_with, x.block) for x in run.layer_info] == [
        ("layer", True, "", "")
    ] * 2
    with RunDatabase(db, read_only=True) as database:
        version = database.conn.execute(
            "SELECT value FROM meta WHERE key='schema_version'"
        ).fetchone()[0]
    assert version == str(SCHEMA_VERSION) == "3"
