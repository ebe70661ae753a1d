"""Every example of docs/integrations.md runs: TensorBoard, W&B and the export commands,
Lightning (the chosen metrics, resuming, LightningCLI with its YAML config), Hugging Face
(its final log, resuming) and the torchrun script launched with torchrun on 2 CPU
processes. The last two are slow (`make test-slow`); by default
tests/integrations/test_transformers.py and test_distributed.py check the same adapters."""

from __future__ import annotations

import csv
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from backprobe import open_run
from backprobe.store import RunDatabase

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"

#: A text found in exactly one example of the page, for each example the tests run.
EXAMPLES = (
    "TensorBoardSink(",
    "write_run(",
    "WandbSink(",
    "backprobe export",
    "BackprobeCallback(every=2",
    'metrics=["grad_norm_preclip"',
    "ckpt_path=ckpt_path",
    "# config.yaml",
    "# cli.py",
    "BackprobeTrainerCallback(every=2",
    "log_history[-1]",
    'resume_from_checkpoint="hf-resumed',
    "torchrun --standalone",
)


def blocks() -> list[tuple[str, str]]:
    """Every fenced example of the page: (language, code)."""
    return re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), re.S)


def block(marker: str) -> str:
    """The example of the page that contains ``marker``."""
    found = [code for _, code in blocks() if marker in code]
    assert len(found) == 1, f"expected one example with {marker!r}, found {len(found)}"
    return found[0]


def test_every_example_of_the_page_is_run():
    for language, code in blocks():
        assert [m for m in EXAMPLES if m in code], f"a {language} example no test runs:\n{code}"
    for marker in EXAMPLES:
        block(marker)


def run_example(code: str, tmp_path: Path, monkeypatch, argv: tuple[str, ...] = ()) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sys, "argv", ["example.py", *argv])
    script = tmp_path / "example.py"
    script.write_text(code)
    runpy.run_path(str(script), run_name="__main__")


def test_tensorboard_example(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    run_example(block("TensorBoardSink(") + block("write_run("), tmp_path, monkeypatch)
    for logdir in ("tb", "tb-again"):
        assert list((tmp_path / logdir).glob("events.out.tfevents.*"))
    assert (tmp_path / "backprobe-runs" / "runs.db").exists()


def test_wandb_example_and_the_export_commands(tmp_path, monkeypatch, capsys):
    """The W&B example, then each ``backprobe export`` line on its run (W&B offline, the
    MLflow server's address swapped for a local MLflow folder)."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    for key, value in {
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
        "WANDB__DISABLE_STATS": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_MODE": "offline",
        "MLFLOW_ALLOW_FILE_STORE": "true",
    }.items():
        monkeypatch.setenv(key, value)  # fmt: skip
    import wandb

    from backprobe.cli import main

    wandb.teardown()  # W&B reads its environment once per process setup: set it up anew
    run_example(block("WandbSink("), tmp_path, monkeypatch)
    run = open_run(tmp_path / "backprobe-runs" / "runs.db", "wandb-example")
    assert run.steps.tolist() == [0, 5, 10, 15]
    mlruns = (tmp_path / "mlruns").as_uri()
    for line in block("backprobe export").splitlines():
        command = shlex.split(line.replace("http://127.0.0.1:5000", mlruns), comments=True)
        assert command[:2] == ["backprobe", "export"]
        main(command[1:])
        assert "wrote 4 steps to" in capsys.readouterr().out
    wandb.teardown()
    assert len(list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))) == 1  # the example's
    assert len(list(tmp_path.glob("exported/wandb/offline-run-*/run-*.wandb"))) == 1
    assert list((tmp_path / "exported").glob("*-wandb-example/events.out.tfevents.*"))
    assert list((tmp_path / "mlruns").glob("*/*/metrics/backprobe/loss"))


def test_lightning_example(tmp_path, monkeypatch, capsys):
    pytest.importorskip("lightning")
    run_example(block("BackprobeCallback(every=2"), tmp_path, monkeypatch)
    run = open_run(tmp_path / "backprobe-runs" / "runs.db", "lightning-example")
    assert run.steps.tolist() == [0, 2, 4, 6, 8]
    assert "net.0" in capsys.readouterr().out


def test_lightning_chosen_metrics_example(tmp_path, monkeypatch, capsys):
    pytest.importorskip("lightning")
    code = block("BackprobeCallback(every=2") + block('metrics=["grad_norm_preclip"')
    run_example(code, tmp_path, monkeypatch)
    printed = capsys.readouterr().out.splitlines()[-1]
    assert printed == "['gradients/grad_norm_postclip', 'gradients/grad_norm_preclip']"
    with open(tmp_path / "logs" / "lightning_logs" / "version_0" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    per_step = [int(r["step"]) for r in rows if r["gradients/grad_norm_preclip"]]
    assert per_step == [0, 1, 2, 3, 4, 5]
    (final,) = [r for r in rows if r["gradients/verdict"]]
    assert int(final["step"]) == 6
    assert {k for k in final if k.startswith("gradients/findings/")} >= {
        "gradients/findings/info",
        "gradients/findings/warning",
        "gradients/findings/error",
    }
    run = open_run(tmp_path / "backprobe-runs" / "runs.db", "chosen-example")
    assert (run.history("grad_norm_postclip") <= 0.1 + 1e-6).all()  # gradient_clip_val=0.1


def test_lightning_resume_example(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    code = block("BackprobeCallback(every=2") + block("ckpt_path=ckpt_path")
    run_example(code, tmp_path, monkeypatch)
    with RunDatabase(tmp_path / "backprobe-runs" / "runs.db", read_only=True) as db:
        assert [r.name for r in db.runs()] == ["lightning-example", "resume-example"]
    run = open_run(tmp_path / "backprobe-runs" / "runs.db", "resume-example")
    assert run.steps.tolist() == list(range(12)) and run.status == "finished"


def test_lightning_cli_example(tmp_path, monkeypatch):
    pytest.importorskip("jsonargparse")
    (tmp_path / "config.yaml").write_text(block("# config.yaml"))
    run_example(block("# cli.py"), tmp_path, monkeypatch, ("fit", "--config", "config.yaml"))
    run = open_run(tmp_path / "cli-runs" / "backprobe-runs" / "runs.db", "cli-example")
    assert run.steps.tolist() == [0, 10] and run.layers == ["net.0", "net.2"]
    assert run.info.config["hparams"]["hidden"] == 32  # LightningCLI adds its _instantiator


@pytest.mark.slow
def test_transformers_examples(tmp_path, monkeypatch, capsys):
    """The Trainer example, its final log read, and the resumed training."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    code = block("BackprobeTrainerCallback(every=2") + block("log_history[-1]")
    run_example(code + block('resume_from_checkpoint="hf-resumed'), tmp_path, monkeypatch)
    run = open_run(tmp_path / "hf-out" / "backprobe-runs" / "runs.db", "gpt2-example")  # output_dir
    assert run.steps.tolist() == [0, 2, 4]
    assert "transformer.h.0.attn.c_attn" in run.layers
    assert "verdict at step 4: " in capsys.readouterr().out
    db = tmp_path / "hf-resumed" / "backprobe-runs" / "runs.db"
    with RunDatabase(db, read_only=True) as store:
        assert [r.name for r in store.runs()] == ["resume-example"]
    assert open_run(db, "resume-example").steps.tolist() == list(range(6))


@pytest.mark.slow
def test_torchrun_example(tmp_path):
    (tmp_path / "train.py").write_text(block("torchrun --standalone"))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    done = subprocess.run(
        [*launch, "--nproc_per_node", "2", "train.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with RunDatabase(tmp_path / "backprobe-runs" / "runs.db", read_only=True) as db:
        assert [r.name for r in db.runs()] == ["ddp-example"]  # rank 0 only
    run = open_run(tmp_path / "backprobe-runs" / "runs.db", "ddp-example")
    assert run.steps.tolist() == [0, 5, 10, 15, 20, 25]
    assert run.layers == ["0", "1", "2", "3", "4"]
