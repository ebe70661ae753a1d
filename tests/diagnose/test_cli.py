"""``backprobe check``, ``backprobe diagnose`` and the findings in ``backprobe show``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backprobe.diagnose.storage import load_findings
from backprobe.store import open_run
from backprobe.store.db import DB_ENV

from ..test_cli import WIDE, assert_one_line_error, run_main

MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn
    from backprobe.lab.models import DeepMLP

    def deep_sigmoid():
        torch.manual_seed(0)
        return DeepMLP(16, 32, 12, 4, activation="sigmoid")

    def relu_he():
        torch.manual_seed(0)
        return DeepMLP(16, 32, 6, 4, activation="relu", init="he")

    def raises():
        raise ValueError("width must be positive")
    """
)

#: Trains a deep sigmoid net, plants a NaN weight at step 4, and dies with an exception.
CRASH = textwrap.dedent(
    """
    import sys, torch
    import backprobe as bp
    from backprobe.lab.models import DeepMLP

    torch.manual_seed(0)
    model = DeepMLP(8, 16, 3, 2, activation="relu", init="he")
    probe = bp.Probe(model, db=sys.argv[1], name="crashed", config={"lr": 0.01})
    probe.attach()
    x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
    for step in range(6):
        if step == 4:
            with torch.no_grad():
                model.fc2.weight[0, 0] = float("nan")
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        probe.step(loss)
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.01 * p.grad
                p.grad = None
    raise RuntimeError("diverged")
    """
)


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.delenv(DB_ENV, raising=False)
    for key, value in WIDE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cli_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_check_prints_verdict_mean_field_and_findings(monkeypatch, capsys):
    code, out, err = run_main(
        monkeypatch, capsys, "check", "cli_models:deep_sigmoid", "--input-shape", "32,16"
    )
    assert code == 0, err
    assert "verdict: vanishing" in out
    assert "mean field: sigmoid" in out and "χ1=" in out
    assert "[error] vanishing" in out and "[error] initialisation" in out
    assert "backprobe.remedies.swap_activations_" in out
    assert "Glorot & Bengio 2010" in out


def test_check_fail_on(monkeypatch, capsys):
    args = ("check", "cli_models:deep_sigmoid", "--input-shape", "32,16", "--fail-on")
    assert run_main(monkeypatch, capsys, *args, "warning")[0] == 2
    healthy = ("check", "cli_models:relu_he", "--input-shape", "32,16", "--fail-on", "warning")
    code, out, _ = run_main(monkeypatch, capsys, *healthy)
    assert code == 0 and "verdict: healthy" in out


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["no_such_module_q:make", "--input-shape", "4,16"], ["Cannot import", "no_such"]),
        (["cli_models:missing", "--input-shape", "4,16"], ["no callable 'missing'"]),
        (["cli_models:raises", "--input-shape", "4,16"], ["raised ValueError", "positive"]),
        (["cli_models:relu_he", "--input-shape", "4,15"], ["(4, 15)", "mat1 and mat2"]),
        (["cli_models:relu_he", "--input-shape", "4,x"], ["--input-shape", "'4,x'"]),
        (["cli_models", "--input-shape", "4,16"], ["MODULE:FACTORY"]),
        (["cli_models:relu_he", "--input-shape", "4,16", "--fail-on", "x"], ["--fail-on"]),
    ],
    ids=[
        "unimportable",
        "no-factory",
        "factory-raises",
        "wrong-shape",
        "bad-shape",
        "no-colon",
        "bad-fail-on",
    ],
)
def test_check_errors_are_one_line(monkeypatch, capsys, args, fragments):
    code, _, err = run_main(monkeypatch, capsys, "check", *args)
    assert_one_line_error(code, err, *fragments)


def test_diagnose_a_crashed_run_then_show_lists_the_findings(monkeypatch, capsys, tmp_path):
    db = tmp_path / "runs.db"
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    done = subprocess.run(
        [sys.executable, str(script), str(db)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "diverged" in done.stderr
    assert open_run(db, "crashed").status == "failed"

    code, out, err = run_main(monkeypatch, capsys, "diagnose", "crashed", "--db", db)
    assert code == 0, err
    assert "[error] nonfinite" in out and "step 4" in out and "fc2" in out
    assert "saved 1 finding to run" in out
    (stored,) = load_findings(db, "crashed")
    assert stored.kind == "nonfinite" and stored.step == 4
    assert stored.evidence["layer"] == "fc2" and stored.evidence["phase"] == "forward"

    # diagnosing again replaces the stored set; show lists it
    assert run_main(monkeypatch, capsys, "diagnose", "crashed", "--db", db)[0] == 0
    assert len(load_findings(db, "crashed")) == 1
    code, out, _ = run_main(monkeypatch, capsys, "show", "crashed", "--db", db)
    assert code == 0 and "findings (1, stored by backprobe diagnose)" in out
    assert "[error] nonfinite" in out
    # one judgment: diagnose and show print the same verdict line for the same run
    diagnosed = run_main(monkeypatch, capsys, "diagnose", "crashed", "--db", db)[1]
    verdicts = [line for line in diagnosed.splitlines() if line.startswith("verdict:")]
    assert len(verdicts) == 1 and "nonfinite" in verdicts[0]
    assert verdicts[0] in out.splitlines()


def test_show_without_findings_says_how_to_get_them(monkeypatch, capsys, tmp_path: Path):
    from ..store.helpers import record

    db = tmp_path / "runs.db"
    record(db, name="tiny", steps=3)
    code, out, _ = run_main(monkeypatch, capsys, "show", "tiny", "--db", db)
    assert code == 0 and "backprobe diagnose 1" in out


def test_diagnose_unknown_run_is_one_line(monkeypatch, capsys, tmp_path):
    from ..store.helpers import record

    db = tmp_path / "runs.db"
    record(db, name="tiny", steps=2)
    code, _, err = run_main(monkeypatch, capsys, "diagnose", "nope", "--db", db)
    assert_one_line_error(code, err, "No run 'nope'")
