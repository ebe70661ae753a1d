"""``backprobe lab list | run | table``: the commands, their output and their user errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from backprobe.cli import main
from backprobe.lab.experiments.results import write_results
from backprobe.lab.experiments.table import collect


def _main(monkeypatch, capsys, *args: object) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setattr(sys, "argv", ["backprobe", *map(str, args)])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = 0 if exc.code is None else int(exc.code)
    out, err = capsys.readouterr()
    return code, out, err


def test_list_names_every_experiment_and_its_settings(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = _main(monkeypatch, capsys, "lab", "list", "--settings")
    assert code == 0
    for name in ("adding", "copy", "temporal-order", "autocomplete", "depth-scale", "esn"):
        assert name in out
    assert "one of 'rnn', 'lstm', 'gru', 'irnn', 'esn'" in out  # the cell setting's type


def test_run_then_table(monkeypatch, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "runs.db"
    code, out, err = _main(
        monkeypatch, capsys, "lab", "run", "w-rec", "--quick", "-v", "lambda0.5",
        "--set", "steps=31", "--db", db,
    )  # fmt: skip
    assert code == 0, err
    assert "lambda0.5" in out and "time_ratio_init" in out
    code, out, err = _main(monkeypatch, capsys, "lab", "table", "w-rec", "--db", db)
    assert code == 0, err
    assert "lambda0.5 (quick+set)" in out and "reproduced" in out
    assert "Pascanu" in out
    page = write_results(db, tmp_path / "results.md")
    text = page.read_text()
    assert "| w-rec | lambda0.5 (quick+set) | time_ratio_init |" in text
    assert "✅ reproduced" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("lab", "run", "addin"), "No lab experiment 'addin'"),
        (("lab", "run", "adding", "--set", "lr=fast"), "expects float"),
        (("lab", "run", "adding", "--set", "hidden"), "key=value"),
        (("lab", "run", "adding", "-v", "nope"), "no variant 'nope'"),
        (("lab", "run", "adding", "--jobs", "0"), "--jobs >= 1"),
        (("lab", "table", "nope"), "No lab experiment 'nope'"),
    ],
)
def test_user_errors_are_one_line(monkeypatch, capsys, tmp_path, args, message) -> None:  # type: ignore[no-untyped-def]
    code, _out, err = _main(monkeypatch, capsys, *args, "--db", tmp_path / "runs.db")
    assert code == 1
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("adding", "--set", "steps=0"), "Setting steps of experiment 'adding' expects int > 0"),
        (("adding", "--set", "lr=-1"), "Setting lr of experiment 'adding' expects float > 0"),
        (("temporal-order", "--set", "momentum=1.5"), "momentum"),
        (("temporal-order", "--set", "symbols=4"), "expects one of 2, 3, got '4'"),
        (("esn", "--set", "test_fraction=1"), "test_fraction"),
        (("latch", "--set", "noise=-0.1"), "noise"),
    ],
)
def test_settings_out_of_bounds_fail_in_one_line_before_any_run(  # type: ignore[no-untyped-def]
    monkeypatch, capsys, tmp_path, args, message
) -> None:
    db = tmp_path / "runs.db"
    code, _out, err = _main(monkeypatch, capsys, "lab", "run", *args, "--quick", "--db", db)
    assert code == 1
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not db.exists() or not collect(db)  # no run was started, so none failed
