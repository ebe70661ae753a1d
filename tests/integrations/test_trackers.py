"""W&B and MLflow sinks: what a probe records, read back from W&B's offline run file and
from a real MLflow tracking server started on 127.0.0.1 for these tests; and the public,
lazy names of backprobe.integrations."""

from __future__ import annotations

import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from backprobe import Probe, open_run
from backprobe.errors import ProbeConfigError

SERVER_START_S = 60.0


def train(probe: Probe, steps: int = 4) -> Probe:
    """A few SGD steps of a small tanh net, seeded, recorded by ``probe`` (closed after)."""
    with probe:
        train_steps(probe, steps)
    return probe


def tanh_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def assert_logged_equal_history(logged: dict[str, dict[int, float]], probe: Probe) -> None:
    """Every per-layer gradient norm and the loss, at every recorded step, as stored (a
    statistic that does not apply to a layer, NaN, is not logged)."""
    steps = probe.steps.tolist()
    for j, layer in enumerate(probe.layers):
        for stat in ("grad_norm", "signal_norm"):
            wanted = probe.history(stat)[:, j]
            if np.isnan(wanted).all():
                assert f"backprobe/{stat}/{layer}" not in logged
                continue
            got = [logged[f"backprobe/{stat}/{layer}"][s] for s in steps]
            np.testing.assert_allclose(got, wanted, rtol=1e-6, err_msg=f"{stat}/{layer}")
    got = [logged["backprobe/loss"][s] for s in steps]
    np.testing.assert_allclose(got, probe.history("loss"), rtol=1e-6)


# -- public names -----------------------------------------------------------------------


def test_importing_backprobe_and_its_integrations_imports_no_framework():
    code = (
        "import sys, backprobe, backprobe.integrations as i; "
        "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers', "
        "'wandb', 'mlflow', 'tensorboard', 'torch.utils.tensorboard') if m in sys.modules)); "
        "i.WandbSink; print('wandb' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split("\n")[:2] == ["[]", "True"]


def test_the_public_names_are_the_adapters():
    import backprobe.integrations as integrations
    from backprobe.integrations.mlflow import MLflowSink
    from backprobe.integrations.tensorboard import TensorBoardSink
    from backprobe.integrations.wandb import WandbSink

    assert integrations.WandbSink is WandbSink
    assert integrations.MLflowSink is MLflowSink
    assert integrations.TensorBoardSink is TensorBoardSink
    assert set(integrations.__all__) <= set(dir(integrations))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        integrations.Nope  # noqa: B018


# -- W&B, offline -----------------------------------------------------------------------

wandb = pytest.importorskip("wandb")


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B writing to tmp_path only: offline, no telemetry, no console."""
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB__DISABLE_STATS": "true",
        "WANDB__DISABLE_META": "true",
    }.items():
        monkeypatch.setenv(key, value)
    wandb.teardown()  # W&B reads its environment once per process setup: set it up anew
    yield tmp_path
    wandb.teardown()


def wandb_history(folder: Path, timeout: float = 30.0) -> dict[str, dict[int, float]]:
    """The history rows of the one offline run under ``folder``, read from its ``.wandb``
    file (LevelDB log blocks of protobuf Records): key → step → value.

    W&B's service process writes the file after ``finish()`` returns: read it again until
    it holds the run's exit record (at most ``timeout`` seconds)."""
    (path,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        logged, complete = _read_wandb_file(path)
        if complete or time.monotonic() > deadline:
            return logged
        time.sleep(0.1)


def _read_wandb_file(path: Path) -> tuple[dict[str, dict[int, float]], bool]:
    """(key → step → value of the history records, whether the exit record is there)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, record, logged = path.read_bytes(), 7, 32768, b"", {}
    complete = False
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind == 0 and length == 0):  # the rest of a block is padding
            pos += left
            continue
        record += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or a fragmented one's last part
            message = wandb_internal_pb2.Record()
            message.ParseFromString(record)
            record = b""
            kind_of_record = message.WhichOneof("record_type")
            complete = complete or kind_of_record == "exit"
            if kind_of_record == "history":
                step = message.history.step.num
                for item in message.history.item:  # a key with "/" is stored split
                    key = item.key or "/".join(item.nested_key)
                    logged.setdefault(key, {})[step] = float(item.value_json)
    return logged, complete


def test_wandb_sink_logs_what_the_probe_records(offline_wandb):
    from backprobe.integrations import WandbSink

    run = wandb.init(project="backprobe-test", dir=str(offline_wandb))
    probe = train(Probe(tanh_net(), db=None, every=2, sinks=[WandbSink(run)]), steps=6)
    run.finish()
    logged = wandb_history(offline_wandb)
    assert sorted(logged["backprobe/loss"]) == [0, 2, 4]
    assert_logged_equal_history(logged, probe)


def test_wandb_sink_without_a_run_says_how_to_start_one(offline_wandb):
    from backprobe.integrations import WandbSink

    with pytest.raises(ProbeConfigError, match=r"wandb\.init"):
        WandbSink()


# -- MLflow, a real tracking server -------------------------------------------------------

pytest.importorskip("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 with a SQLite store in a temporary folder, stopped
    (its whole process group) at the end; its URI."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--default-artifact-root", str(folder / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=(folder / "server.log").open("w"), env=env,
        start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()}")
            time.sleep(0.2)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)


def mlflow_history(uri: str, run_id: str) -> dict[str, dict[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    keys = client.get_run(run_id).data.metrics
    return {key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in keys}


@pytest.fixture
def mlflow_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "1")


def test_mlflow_sink_logs_what_the_probe_records(mlflow_server, mlflow_env):
    from mlflow.tracking import MlflowClient

    from backprobe.integrations import MLflowSink

    client = MlflowClient(mlflow_server)
    run = client.create_run(client.create_experiment("sink"))
    sink = MLflowSink(run.info.run_id, tracking_uri=mlflow_server)
    probe = train(Probe(tanh_net(), db=None, every=2, sinks=[sink]), steps=6)
    logged = mlflow_history(mlflow_server, run.info.run_id)
    assert sorted(logged["backprobe/loss"]) == [0, 2, 4]
    assert_logged_equal_history(logged, probe)
    assert all(math.isfinite(v) for values in logged.values() for v in values.values())


def test_mlflow_sink_without_a_run_says_how_to_give_one(mlflow_env):
    from backprobe.integrations import MLflowSink

    with pytest.raises(ProbeConfigError, match=r"mlflow\.start_run"):
        MLflowSink()


def test_a_stored_run_is_written_after_the_fact(tmp_path, mlflow_server, mlflow_env):
    from mlflow.tracking import MlflowClient

    from backprobe.integrations import MLflowSink

    probe = train(Probe(tanh_net(), db=tmp_path / "runs.db", name="later"), steps=3)
    client = MlflowClient(mlflow_server)
    run = client.create_run(client.create_experiment("after"))
    sink = MLflowSink(run.info.run_id, tracking_uri=mlflow_server)
    assert sink.write_run(open_run(tmp_path / "runs.db", "later")) == 3
    assert_logged_equal_history(mlflow_history(mlflow_server, run.info.run_id), probe)


# -- backprobe export -------------------------------------------------------------------


def crashed_run(db: Path) -> Probe:
    """A stored run whose training raised after three recorded steps: marked failed."""
    probe = Probe(tanh_net(), db=db, name="crashed")
    with pytest.raises(RuntimeError, match="out of memory"), probe:
        train_steps(probe, 3)
        raise RuntimeError("out of memory")
    assert open_run(db, "crashed").status == "failed"
    return probe


def train_steps(probe: Probe, steps: int) -> None:
    """``steps`` seeded SGD steps of ``probe``'s model, the probe attached by the caller."""
    opt = torch.optim.SGD(probe.model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen)
        loss = (probe.model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        loss.backward()
        probe.step(loss)
        opt.step()
        opt.zero_grad()


def export(*args: str) -> None:
    from backprobe.cli import main

    main(["export", *args])


def test_export_a_crashed_run_to_mlflow(tmp_path, mlflow_server, mlflow_env, capsys):
    from mlflow.tracking import MlflowClient

    probe = crashed_run(tmp_path / "runs.db")
    export("crashed", "--to", "mlflow", "--tracking-uri", mlflow_server,
           "--db", str(tmp_path / "runs.db"))  # fmt: skip
    run_id = capsys.readouterr().out.split("MLflow run ")[1].split()[0]
    tracked = MlflowClient(mlflow_server).get_run(run_id)
    assert (tracked.info.run_name, tracked.info.status) == ("crashed", "FAILED")
    assert_logged_equal_history(mlflow_history(mlflow_server, run_id), probe)


def test_export_a_crashed_run_to_wandb(tmp_path, offline_wandb):
    probe = crashed_run(tmp_path / "runs.db")
    export("crashed", "--to", "wandb", "--out", str(tmp_path), "--db", str(tmp_path / "runs.db"))
    assert_logged_equal_history(wandb_history(tmp_path), probe)


def test_export_a_crashed_run_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    probe = crashed_run(tmp_path / "runs.db")
    export("crashed", "--to", "tensorboard", "--out", str(tmp_path / "tb"),
           "--db", str(tmp_path / "runs.db"))  # fmt: skip
    (logdir,) = (tmp_path / "tb").iterdir()
    events = EventAccumulator(str(logdir))
    events.Reload()
    logged = {
        tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]
    }
    assert_logged_equal_history(logged, probe)


def test_export_to_an_unknown_tracker_names_the_known_ones(tmp_path, capsys):
    crashed_run(tmp_path / "runs.db")
    with pytest.raises(SystemExit) as done:
        export("crashed", "--to", "neptune", "--db", str(tmp_path / "runs.db"))
    assert done.value.code == 1
    assert "among tensorboard, wandb, mlflow, got 'neptune'" in capsys.readouterr().err
