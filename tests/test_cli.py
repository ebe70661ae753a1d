"""The ``backprobe`` command: ``runs`` and ``show`` over a run database, and the one-line
errors of ``main()``. (``demo`` has its own tests.)"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backprobe import __version__
from backprobe.cli import app, main
from backprobe.store.db import DB_ENV

from .store.helpers import record
from .store.read_only import read_only_folder

WIDE = {"COLUMNS": "200", "NO_COLOR": "1"}


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """Runs 1 'alpha' (finished, steps 0 2 4 6), 2 'beta' (failed, steps 0 1 2),
    3 'net[relu]' (a name that looks like rich markup)."""
    path = tmp_path_factory.mktemp("cli") / "runs.db"
    record(path, name="alpha", steps=7, every=2)
    beta = record(path, name="beta", steps=3)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE runs SET status='failed' WHERE id=?", (beta.run_id,))
    conn.close()
    record(path, name="net[relu]", steps=2)
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(DB_ENV, raising=False)
    for key, value in WIDE.items():
        monkeypatch.setenv(key, value)
    # typer installs its own excepthook when the app runs; keep the test process's
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)


def invoke(*args: str, env: dict | None = None):
    result = CliRunner().invoke(app, [str(a) for a in args], env={**WIDE, **(env or {})})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """``main()`` as the console script runs it: exit status, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["backprobe", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    assert code == 1
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("backprobe: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def subprocess_cli(*args: str, env: dict | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "backprobe.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **WIDE, **(env or {})},
        cwd=cwd,
        timeout=120,
    )


# -- version and help -------------------------------------------------------------------------


def test_version(monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "--version")
    assert (code, out.strip(), err) == (0, f"backprobe {__version__}", "")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([], ["runs", "show", "demo", "--version"]),
        (["runs"], ["--db", DB_ENV]),
        (["show"], ["run", "--db", DB_ENV, "--step", "--params-only"]),
    ],
    ids=["root", "runs", "show"],
)
def test_help(monkeypatch, capsys, command, expected):
    code, out, err = run_main(monkeypatch, capsys, *command, "--help")
    assert code == 0 and err == ""
    assert "Usage:" in out
    for word in expected:
        assert word.lower() in out.lower()


def test_usage_error_is_short_and_has_no_traceback(monkeypatch, capsys):
    """Regression: main() imported click to recognise usage errors, and recent typer
    vendors click instead of depending on it, so a typo gave a ModuleNotFoundError."""
    code, _, err = run_main(monkeypatch, capsys, "runs", "--bogus")
    assert_one_line_error(code, err, "No such option", "--bogus", "backprobe runs --help")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["show"], ["Missing argument 'run'", "backprobe show --help"]),
        (["show", "1", "--step", "x"], ["Invalid value for '--step'"]),
        (["lab", "bogus"], ["No such command 'bogus'", "backprobe lab --help"]),
        (["lab", "run"], ["Missing argument 'name'"]),
        (["diagnose", "1", "--optimizer", "x"], ["'x' is not one of 'sgd', 'adam'"]),
    ],
    ids=["missing-argument", "bad-value", "unknown-command", "missing-in-a-group", "choice"],
)
def test_usage_errors_are_one_line_and_exit_1_as_the_readme_says(
    monkeypatch, capsys, args, fragments
):
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, *fragments)
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert "usage errors" in readme and "print one line and exit with status 1" in readme


def test_no_command_prints_the_help_and_succeeds(monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys)
    assert (code, err) == (0, "")
    assert out.startswith("Usage: ") and "Commands:" in out


# -- runs -------------------------------------------------------------------------------------


def test_runs_lists_ids_names_and_statuses(db):
    result = invoke("runs", "--db", db)
    assert result.exit_code == 0, result.output
    rows = {
        m.group(1): m.group(0)
        for m in re.finditer(r"^\W*(\d+)\W.*$", result.output, flags=re.MULTILINE)
    }
    assert set(rows) == {"1", "2", "3"}
    assert re.search(r"\balpha\b.*\bfinished\b.*\b4\b.*\b3\b", rows["1"])
    assert re.search(r"\bbeta\b.*\bfailed\b.*\b3\b.*\b3\b", rows["2"])
    assert "net[relu]" in rows["3"]  # shown as written, not eaten as markup
    assert str(db.name) in result.output


def test_runs_on_an_empty_database(tmp_path):
    from backprobe.store import RunDatabase

    path = tmp_path / "runs.db"
    RunDatabase(path, create=True).close()
    result = invoke("runs", "--db", path)
    assert result.exit_code == 0
    assert "No runs in" in result.output and "yet" in result.output


# -- read-only storage ------------------------------------------------------------------------


def _copied(db: Path, folder: Path) -> Path:
    """``folder``, new, holding a copy of the run database ``db`` as runs.db."""
    folder.mkdir()
    (folder / "runs.db").write_bytes(db.read_bytes())
    return folder


def test_a_database_on_read_only_storage_is_listed_shown_and_reported(
    monkeypatch, capsys, db, tmp_path
):
    with read_only_folder(_copied(db, tmp_path / "stored")) as read_only:
        path = read_only / "runs.db"
        listed = invoke("runs", "--db", path)
        shown = invoke("show", "alpha", "--db", path)
        code, _, err = run_main(
            monkeypatch, capsys, "report", "alpha", "--db", path, "-o", read_only / "r.html"
        )
        written = invoke("report", "alpha", "--db", path, "-o", tmp_path / "r.html")
    assert listed.exit_code == 0 and "alpha" in listed.output and "beta" in listed.output
    assert shown.exit_code == 0 and "gradient flow at step 6" in shown.output
    assert_one_line_error(code, err, "Cannot write the report to", str(read_only / "r.html"))
    assert written.exit_code == 0 and (tmp_path / "r.html").stat().st_size > 0


def test_writing_to_read_only_storage_is_one_line_naming_the_path(
    monkeypatch, capsys, db, tmp_path
):
    with read_only_folder(_copied(db, tmp_path / "stored")) as read_only:
        path = read_only / "runs.db"
        code, out, err = run_main(monkeypatch, capsys, "diagnose", "alpha", "--db", path)
    line = assert_one_line_error(code, err, "Cannot write the run database", "read-only")
    assert str(path) in line and "--db PATH" in line
    # the diagnosis itself is shown before saving it fails: nothing the user asked is lost
    assert "run 1 alpha" in out and "verdict:" in out and "saved" not in out


def test_runs_on_a_missing_database(monkeypatch, capsys, tmp_path):
    path = tmp_path / "absent.db"
    code, out, err = run_main(monkeypatch, capsys, "runs", "--db", path)
    assert_one_line_error(code, err, "No run database at", str(path), DB_ENV)
    assert out == ""
    assert not path.exists()


def test_runs_on_a_missing_database_via_the_real_entry_point(tmp_path):
    path = tmp_path / "absent.db"
    done = subprocess_cli("runs", "--db", path)
    assert_one_line_error(done.returncode, done.stderr, "No run database at", str(path))
    assert done.stdout == ""


def test_runs_default_database_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    default = tmp_path / "backprobe-runs" / "runs.db"
    record(default, name="here", steps=1)
    monkeypatch.chdir(tmp_path)
    result = invoke("runs")
    assert result.exit_code == 0
    assert "here" in result.output


def test_db_environment_variable_is_honoured(db, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(DB_ENV, str(db))
    code, out, err = run_main(monkeypatch, capsys, "runs")
    assert code == 0, err
    assert "alpha" in out and "beta" in out
    # --db wins over the environment
    code, _, err = run_main(monkeypatch, capsys, "runs", "--db", tmp_path / "other.db")
    assert_one_line_error(code, err, "other.db")
    # and a missing file named by the environment is reported by that name
    monkeypatch.setenv(DB_ENV, str(tmp_path / "env.db"))
    code, _, err = run_main(monkeypatch, capsys, "show", "alpha")
    assert_one_line_error(code, err, "env.db")


# -- show -------------------------------------------------------------------------------------


@pytest.mark.parametrize("run", ["1", "alpha"], ids=["id", "name"])
def test_show_by_id_and_by_name(db, run):
    result = invoke("show", run, "--db", db)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "run 1 alpha — finished, 4 recorded steps" in out
    assert "gradient flow at step 6" in out  # the last recorded step by default
    for layer in ("0 Linear", "1 Tanh", "2 Linear"):
        assert layer in out
    assert "verdict:" in out


def test_show_a_failed_run_and_a_markup_like_name(db):
    result = invoke("show", "beta", "--db", db)
    assert result.exit_code == 0
    assert "run 2 beta — failed, 3 recorded steps" in result.output
    result = invoke("show", "3", "--db", db)
    assert result.exit_code == 0, result.output
    assert "run 3 net[relu] — finished" in result.output


def test_show_step(db):
    result = invoke("show", "alpha", "--db", db, "--step", "2")
    assert result.exit_code == 0, result.output
    assert "gradient flow at step 2" in result.output
    assert "gradient flow at step 6" not in result.output


def test_show_params_only(db):
    full = invoke("show", "alpha", "--db", db)
    only = invoke("show", "alpha", "--db", db, "--params-only")
    assert only.exit_code == 0, only.output
    assert "Tanh" in full.output
    assert "Tanh" not in only.output
    assert "0 Linear" in only.output and "2 Linear" in only.output


def test_show_step_not_recorded(monkeypatch, capsys, db):
    code, _, err = run_main(monkeypatch, capsys, "show", "alpha", "--db", db, "--step", "3")
    assert_one_line_error(code, err, "Step 3 was not recorded", "0…6")


def test_show_run_without_steps(monkeypatch, capsys, tmp_path):
    import backprobe as bp

    from .store.helpers import tiny_mlp

    path = tmp_path / "runs.db"
    with bp.Probe(tiny_mlp(), db=path, name="idle"):
        pass
    code, _, err = run_main(monkeypatch, capsys, "show", "idle", "--db", path)
    assert_one_line_error(code, err, "no recorded step")


@pytest.mark.parametrize("run", ["99", "nope"])
def test_show_unknown_run(monkeypatch, capsys, db, run):
    code, out, err = run_main(monkeypatch, capsys, "show", run, "--db", db)
    assert_one_line_error(
        code, err, f"No run '{run}'", "1 (alpha)", "2 (beta)", "`backprobe runs --db PATH`"
    )
    assert out == ""


def test_show_missing_database(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "show", "1", "--db", tmp_path / "x.db")
    assert_one_line_error(code, err, "No run database at")


def test_show_folder(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "show", "1", "--db", tmp_path)
    assert_one_line_error(code, err, "is a folder")


def test_corrupt_file_is_a_one_line_error_and_left_untouched(monkeypatch, capsys, tmp_path):
    path = tmp_path / "runs.db"
    junk = bytes(range(256)) * 16
    path.write_bytes(junk)
    code, out, err = run_main(monkeypatch, capsys, "runs", "--db", path)
    assert_one_line_error(code, err, "not a backprobe run database", str(path))
    assert out == ""
    done = subprocess_cli("show", "1", "--db", path)  # and through the real entry point
    assert_one_line_error(done.returncode, done.stderr, "not a backprobe run database")
    assert path.read_bytes() == junk


def test_foreign_database_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.close()
    before = path.read_bytes()
    code, _, err = run_main(monkeypatch, capsys, "show", "1", "--db", path)
    assert_one_line_error(code, err, "foreign SQLite database")
    assert path.read_bytes() == before


def test_show_through_the_real_entry_point_with_the_environment(db, tmp_path):
    done = subprocess_cli("show", "alpha", env={DB_ENV: str(db)}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "run 1 alpha" in done.stdout and "verdict:" in done.stdout
    assert not (tmp_path / "backprobe-runs").exists()  # the default was not used


def test_installed_console_script(db):
    script = Path(sys.executable).with_name("backprobe")
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    done = subprocess.run(
        [str(script), "runs", "--db", str(db)],
        capture_output=True,
        text=True,
        env={**os.environ, **WIDE},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "alpha" in done.stdout and "beta" in done.stdout


def test_runs_shows_whole_names_at_80_columns(tmp_path, monkeypatch):
    """The name is what `show` takes: it must not be cut in a standard terminal."""
    import torch
    from typer.testing import CliRunner

    from backprobe import Probe
    from backprobe.cli import app

    monkeypatch.chdir(tmp_path)
    db = "runs.db"
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    name = "demo/ch1/short-sigmoid"  # the demo's longest name; cut to "short-sigmo…" before
    with Probe(model, db=db, name=name) as probe:
        model(torch.randn(3, 2)).sum().backward()
        probe.step()
    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(app, ["runs", "--db", db])
    assert result.exit_code == 0
    assert name in result.output


def test_counts_of_one_are_singular(tmp_path):
    """Regression: "1 recorded steps", "saved 1 findings"."""
    path = tmp_path / "runs.db"
    record(path, name="once", steps=1)
    shown = invoke("show", "once", "--db", path)
    assert shown.exit_code == 0, shown.output
    assert "1 recorded step\n" in shown.output
    diagnosed = invoke("diagnose", "once", "--db", path)
    assert diagnosed.exit_code == 0, diagnosed.output
    assert "1 findings" not in diagnosed.output and "1 recorded steps" not in diagnosed.output


PRESCRIBED = """
import torch
from backprobe.lab.models import DeepMLP

def deep_sigmoid():
    torch.manual_seed(0)
    return DeepMLP(16, 32, 50, 4, activation="sigmoid")
"""


def test_check_prescribe_prints_the_measured_table(monkeypatch, capsys, tmp_path):
    (tmp_path / "prescribed_models.py").write_text(PRESCRIBED)
    monkeypatch.syspath_prepend(str(tmp_path))
    for key, value in WIDE.items():
        monkeypatch.setenv(key, value)
    args = ["check", "prescribed_models:deep_sigmoid", "--input-shape", "32,16"]
    main([*args, "--prescribe"])
    out = capsys.readouterr().out
    table = out[out.index("measured prescriptions") :]
    assert out.index("[error] vanishing") < out.index("measured prescriptions")
    rows = [line.split() for line in table.splitlines() if "→" in line]
    assert rows[0][:6] == ["ReLU", "+", "He", "init", "instead", "of"]
    assert rows[0][-1] == "yes" and "0.999" in rows[0] and rows[-1][-1] == "no"
    assert 'best: backprobe.remedies.swap_activations_(model, from_="sigmoid"' in table
    main(args)
    assert "measured prescriptions" not in capsys.readouterr().out  # only when asked


def test_check_prescribe_with_a_wrong_shape_is_one_line(monkeypatch, capsys, tmp_path):
    (tmp_path / "prescribed_models.py").write_text(PRESCRIBED)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "prescribed_models:deep_sigmoid", "--input-shape", "4,15", "--prescribe"])
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err, "(4, 15)")
