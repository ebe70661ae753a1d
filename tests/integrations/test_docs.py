"""The examples of docs/integrations.md run: TensorBoard, Lightning, Hugging Face, and the
torchrun script launched with torchrun on 2 CPU processes. The last two are slow (`make
test-slow`); by default tests/integrations/test_transformers.py and test_distributed.py
check the same adapters."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from backprobe import open_run
from backprobe.store import RunDatabase

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"


def block(marker: str) -> str:
    """The Python example of the page that contains ``marker``."""
    found = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S) if marker in b]
    assert len(found) == 1, f"expected one example with {marker!r}, found {len(found)}"
    return found[0]


def run_example(code: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    script = tmp_path / "example.py"
    script.write_text(code)
    runpy.run_path(str(script), run_name="__main__")


def test_tensorboard_example(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    run_example(block("TensorBoardSink(") + block("write_run("), tmp_path, monkeypatch)
    for logdir in ("tb", "tb-again"):
        assert list((tmp_path / logdir).glob("events.out.tfevents.*"))
    assert (tmp_path / "backprobe-runs" / "runs.db").exists()


def test_wandb_example(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for key, value in {
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
        "WANDB__DISABLE_STATS": "true",
        "WANDB_DISABLE_GIT": "true",
    }.items():
        monkeypatch.setenv(key, value)  # fmt: skip
    import wandb

    wandb.teardown()  # W&B reads its environment once per process setup: set it up anew
    run_example(block("WandbSink("), tmp_path, monkeypatch)
    wandb.teardown()
    assert len(list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))) == 1
    run = open_run(tmp_path / "backprobe-runs" / "runs.db", "wandb-example")
    assert run.steps.tolist() == [0, 5, 10, 15]


def test_lightning_example(tmp_path, monkeypatch, capsys):
    pytest.importorskip("lightning")
    run_example(block("BackprobeCallback("), tmp_path, monkeypatch)
    run = open_run(tmp_path / "backprobe-runs" / "runs.db", "lightning-example")
    assert run.steps.tolist() == [0, 2, 4, 6, 8]
    assert "net.0" in capsys.readouterr().out


@pytest.mark.slow
def test_transformers_example(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    run_example(block("BackprobeTrainerCallback("), tmp_path, monkeypatch)
    run = open_run(tmp_path / "hf-out" / "backprobe-runs" / "runs.db", "gpt2-example")  # output_dir
    assert run.steps.tolist() == [0, 2, 4]
    assert "transformer.h.0.attn.c_attn" in run.layers


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
