"""BackprobeCallback in a real lightning.Trainer records what a plain loop records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import backprobe as bp
from backprobe import Probe, open_run
from backprobe.store import RunDatabase
from backprobe.store.view import LAYER_SERIES

L = pytest.importorskip("lightning")
from backprobe.integrations.lightning import BackprobeCallback  # noqa: E402
from backprobe.integrations.metrics import VERDICT_CODES, findings_text  # noqa: E402

from .helpers import hook_count  # noqa: E402

STEPS = 3


class Tiny(L.LightningModule):
    """Linear → Tanh → Linear → ReLU → Linear, SGD on the mean squared error."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


def data(batches: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.randn(batches * 5, 4, generator=gen), torch.randn(batches * 5, 2, generator=gen)
    )


def plain_loop(accumulate: int) -> Probe:
    """The same module, data order and optimizer in a hand-written loop."""
    module = Tiny()
    opt = module.configure_optimizers()
    batches = list(DataLoader(data(STEPS * accumulate), batch_size=5, shuffle=False))
    probe = Probe(module, db=None)
    with probe:
        for step in range(STEPS):
            total = 0.0
            for batch in batches[step * accumulate : (step + 1) * accumulate]:
                loss = module.training_step(batch, 0) / accumulate
                loss.backward()
                total = total + loss.detach()
            probe.step(total)
            opt.step()
            opt.zero_grad()
    return probe


@pytest.mark.parametrize("accumulate", [1, 2])
def test_callback_records_what_a_plain_loop_records(tmp_path, accumulate):
    callback = BackprobeCallback(db=tmp_path / "runs.db", name="lightning")
    trainer = L.Trainer(
        callbacks=[callback],
        max_steps=STEPS,
        accumulate_grad_batches=accumulate,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Tiny(), DataLoader(data(STEPS * accumulate), batch_size=5, shuffle=False))
    probe = callback.probe
    expected = plain_loop(accumulate)
    assert probe.layers == expected.layers == ["net.0", "net.1", "net.2", "net.3", "net.4"]
    assert probe.steps.tolist() == list(range(STEPS))
    for stat in (*LAYER_SERIES, "loss"):
        np.testing.assert_allclose(
            probe.history(stat), expected.history(stat), rtol=1e-6, err_msg=stat
        )
    assert not probe.attached  # closed at the end of training, the run marked finished
    from backprobe import open_run

    assert open_run(tmp_path / "runs.db", "lightning").status == "finished"


class RememberingTiny(Tiny):
    """Tiny that saves the inputs each rank trained on, to rebuild the global batches."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out, self.seen = out, []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[0].clone())
        return super().training_step(batch, batch_idx)

    def on_train_end(self) -> None:
        torch.save(self.seen, f"{self.out}/rank{self.global_rank}.pt")


@pytest.mark.slow
def test_callback_under_ddp_records_the_global_batch(tmp_path):
    """strategy="ddp_spawn" on 2 CPU processes: rank 0's run equals one process trained on
    the union of the two ranks' batches (Lightning's DistributedSampler shuffles)."""
    callback = BackprobeCallback(db=tmp_path / "runs.db", name="ddp")
    trainer = L.Trainer(
        callbacks=[callback],
        max_steps=STEPS,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    dataset = data(2 * STEPS)
    trainer.fit(RememberingTiny(str(tmp_path)), DataLoader(dataset, batch_size=5))
    from backprobe import open_run

    run = open_run(tmp_path / "runs.db", "ddp")
    x, y = dataset.tensors
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    module = Tiny()
    opt = module.configure_optimizers()
    expected = Probe(module, db=None)
    with expected:
        for step in range(STEPS):
            rows = torch.cat([ranks[0][step], ranks[1][step]])
            index = [int((x == row).all(1).nonzero()[0]) for row in rows]
            loss = module.training_step((x[index], y[index]), 0)
            loss.backward()
            expected.step(loss)
            opt.step()
            opt.zero_grad()
    assert run.steps.tolist() == list(range(STEPS))
    for stat in (*LAYER_SERIES, "loss"):
        np.testing.assert_allclose(
            run.history(stat), expected.history(stat), rtol=1e-6, err_msg=stat
        )


class LossKeeping(Tiny):
    """Tiny that keeps each loss it returns, as a float."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses.append(float(loss.detach()))
        return loss


def test_the_stored_loss_is_unscaled_under_a_grad_scaler(tmp_path):
    """fp16 mixed precision with a GradScaler (on the CPU, at a scale of 1024): the loss
    Lightning back-propagates is multiplied by the scale; the stored one is not."""
    from lightning.pytorch.plugins import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    callback = BackprobeCallback(db=None)
    trainer = L.Trainer(
        callbacks=[callback],
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    module = LossKeeping()
    trainer.fit(module, DataLoader(data(STEPS), batch_size=5, shuffle=False))
    np.testing.assert_allclose(callback.probe.history("loss"), module.losses, rtol=1e-6)


# -- logs, clipping, failures, resume, names and LightningCLI ------------------------------


class Clipped(Tiny):
    """Tiny with saved hyper-parameters and a step that can fail on request."""

    def __init__(self, lr: float = 0.2, fail_at: int = -1) -> None:
        super().__init__()
        self.save_hyperparameters()

    def training_step(self, batch, batch_idx):
        if self.global_step == self.hparams.fail_at:
            raise RuntimeError("diverged")
        return super().training_step(batch, batch_idx)


class PostClipNorm(L.Callback):
    """The global gradient norm after Lightning clipped and stepped (zero_grad comes at
    the next batch)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        grads = [p.grad.norm() for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.stack(grads).norm()))


def fit(tmp_path, module, callbacks, steps=STEPS, ckpt_path=None, **trainer_args):
    trainer_args.setdefault("logger", False)
    trainer = L.Trainer(
        callbacks=callbacks,
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        enable_checkpointing=any(
            isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks
        ),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        log_every_n_steps=1,
        **trainer_args,
    )
    trainer.fit(module, DataLoader(data(8), batch_size=5), ckpt_path=ckpt_path)
    return trainer


def test_the_loggers_get_the_chosen_statistics_on_lightnings_step_axis(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = BackprobeCallback(every=1, db="runs.db")
    loggers = [CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")]
    trainer = fit(tmp_path, Clipped(), [callback], logger=loggers)
    probe = callback.probe
    grad = probe.history("grad_norm")
    first, last = probe.layers.index("net.0"), probe.layers.index("net.4")
    metrics = trainer.callback_metrics
    assert float(metrics["backprobe/grad_norm/net.4"]) == pytest.approx(grad[-1, last], rel=1e-6)
    # an MLP's chain: its first linear layer against the last one
    assert float(metrics["backprobe/first_last_ratio"]) == pytest.approx(
        grad[-1, first] / grad[-1, last], rel=1e-6
    )
    import csv

    with open(f"{loggers[0].log_dir}/metrics.csv") as file:
        rows = list(csv.DictReader(file))
    tag = "backprobe/grad_norm_preclip"
    logged = [(int(r["step"]), float(r[tag])) for r in rows if r.get(tag)]
    expected = probe.history("grad_norm_preclip")
    assert logged == [(s, pytest.approx(v, rel=1e-6)) for s, v in enumerate(expected)]
    events = EventAccumulator(loggers[1].log_dir)
    events.Reload()
    tb = [(e.step, e.value) for e in events.Scalars("backprobe/grad_norm/net.0")]
    assert tb == [(s, pytest.approx(v, rel=1e-6)) for s, v in enumerate(grad[:, first])]
    assert [e.value for e in events.Scalars("backprobe/verdict")] == [0.0]  # healthy
    # named after the logger's version, stored under default_root_dir with the hparams
    run = open_run(tmp_path / "runs.db", probe.run_id)
    assert run.name == "csv/version_0"
    assert run.info.config["hparams"] == {"lr": 0.2, "fail_at": -1}


def test_pre_clip_norms_come_first_and_post_clip_norms_are_what_clipping_left(tmp_path):
    callback, after = BackprobeCallback(every=1, db=None), PostClipNorm()
    fit(tmp_path, Clipped(), [callback, after], gradient_clip_val=0.05)
    probe = callback.probe
    pre, post = probe.history("grad_norm_preclip"), probe.history("grad_norm_postclip")
    per_layer = np.sqrt(np.nansum(probe.history("grad_norm") ** 2, axis=1))
    np.testing.assert_allclose(pre, per_layer, rtol=1e-5)  # the probe's own: before clipping
    np.testing.assert_allclose(post, after.norms, rtol=1e-5)
    assert (pre > 0.05 * 3).all() and np.allclose(post, 0.05, rtol=1e-4)


def test_an_exception_fails_the_run_at_once_and_the_next_fit_starts_clean(tmp_path):
    callback = BackprobeCallback(every=1, db=tmp_path / "runs.db")
    module = Clipped(fail_at=2)
    hooks = hook_count(module)
    with pytest.raises(RuntimeError, match="diverged"):
        fit(tmp_path, module, [callback])
    failed = callback.probe
    assert not failed.attached and hook_count(module) == hooks  # every probe hook removed
    run = open_run(tmp_path / "runs.db", failed.run_id)
    assert run.status == "failed" and run.info.error == "RuntimeError: diverged"
    assert run.steps.tolist() == [0, 1]  # what it recorded before the failure is kept
    module.hparams.fail_at = -1
    fit(tmp_path, module, [callback])
    assert callback.probe is not failed and callback.probe.run_id != failed.run_id
    assert callback.probe.history("loss").shape == (STEPS,)  # one probe, not two
    assert not callback.probe.attached and hook_count(module) == hooks
    # a third fit (after one that finished) starts its own run too
    fit(tmp_path, module, [callback])
    with RunDatabase(tmp_path / "runs.db", read_only=True) as db:
        assert [r.status for r in db.runs()] == ["failed", "finished", "finished"]


def test_a_fit_resumed_from_a_checkpoint_continues_the_run_at_the_global_step(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    callback = BackprobeCallback(every=1, db=tmp_path / "runs.db")
    fit(tmp_path, Clipped(), [callback, checkpoints], steps=3)
    first = callback.probe.run_id
    ckpt = next((tmp_path / "ckpt").glob("*step=2*.ckpt"))
    resumed = BackprobeCallback(every=1, db=tmp_path / "runs.db")
    fit(
        tmp_path,
        Clipped(),
        [resumed, ModelCheckpoint(dirpath=tmp_path / "c2")],
        steps=5,
        ckpt_path=ckpt,
    )
    assert resumed.probe.run_id == first
    run = open_run(tmp_path / "runs.db", first)
    assert run.steps.tolist() == [0, 1, 2, 3, 4] and run.status == "finished"


def test_every_probe_option_is_set_from_a_lightning_cli_config(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
trainer:
  max_steps: 2
  accelerator: cpu
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  default_root_dir: {tmp_path}
  callbacks:
    - class_path: backprobe.integrations.BackprobeCallback
      init_args:
        every: 1
        db: cli.db
        name: from-yaml
        exclude: [net.2]
        time_every: 4
        time_batch: 2
        flush_every: 1.0
        unsupported: ignore
        metrics: [grad_norm_preclip]
        config: {{note: yaml}}
        updates: true
"""
    )
    cli = LightningCLI(
        Clipped, run=False, save_config_callback=None, args=["--config", str(config)]
    )
    cli.trainer.fit(cli.model, DataLoader(data(4), batch_size=5))
    run = open_run(tmp_path / "cli.db", "from-yaml")
    assert run.layers == ["net.0", "net.1", "net.3", "net.4"]
    assert run.info.config["note"] == "yaml" and "net.2" in run.info.config["probe"]["exclude"]
    assert set(cli.trainer.callback_metrics) == {"backprobe/grad_norm_preclip"}
    assert np.isfinite(run.history("update_to_weight")[:, 0]).all()  # updates: true


class AdamTiny(Tiny):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class UpdatesByHand(L.Callback):
    """||Δθ|| / ||θ|| of one module's parameters around each training batch."""

    def __init__(self, name: str) -> None:
        self.name, self.ratios = name, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        module = pl_module.get_submodule(self.name)
        self.before = [p.detach().clone() for p in module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pairs = zip(pl_module.get_submodule(self.name).parameters(), self.before, strict=True)
        delta = torch.cat([(a.detach() - b).flatten() for a, b in pairs])
        weight = torch.cat([b.flatten() for b in self.before])
        self.ratios.append(float(delta.double().norm() / weight.double().norm()))


@pytest.mark.parametrize("scaled", [False, True], ids=["fp32", "fp16-grad-scaler"])
def test_updates_are_each_recorded_steps_own_although_the_backward_runs_in_the_closure(
    tmp_path, scaled
):
    """Lightning runs the backward inside optimizer.step(closure), after the optimizer's
    pre-hook (under a GradScaler, before scaler.step and its hooks): either way each
    recorded step gets the update that followed its own gradients."""
    from lightning.pytorch.plugins import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    by_hand = UpdatesByHand("net.2")
    callback = BackprobeCallback(every=2, db=None, updates=True)
    trainer = L.Trainer(
        callbacks=[callback, by_hand],
        max_steps=5,
        accelerator="cpu",
        devices=1,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)] if scaled else None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(AdamTiny(), DataLoader(data(5), batch_size=5))
    probe = callback.probe
    assert probe.steps.tolist() == [0, 2, 4]
    measured = probe.history("update_to_weight")[:, probe.layers.index("net.2")]
    np.testing.assert_allclose(measured, np.asarray(by_hand.ratios)[[0, 2, 4]], rtol=1e-5)
    assert (probe.history("adam_step")[:, probe.layers.index("net.2")] > 0).all()


class Starved(Tiny):
    """Ten sigmoid layers: the first ones' gradients vanish (findings to tell)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(4, 8), nn.Sigmoid()]
        for _ in range(9):
            layers += [nn.Linear(8, 8), nn.Sigmoid()]
        self.net = nn.Sequential(*layers, nn.Linear(8, 2))


def test_the_verdict_and_findings_reach_every_logger_the_text_where_it_takes_text(
    tmp_path, monkeypatch
):
    """Counts and the verdict's code go to every logger (CSV too) at the last global step;
    the findings as text to TensorBoard's text tab and to an MLflow artifact."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a folder: no database to set up
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = BackprobeCallback(every=1, db=None)
    loggers = [
        CSVLogger(tmp_path, name="csv"),
        TensorBoardLogger(tmp_path, name="tb"),
        MLFlowLogger(tracking_uri=(tmp_path / "mlruns").as_uri()),
    ]
    fit(tmp_path, Starved(), [callback], logger=loggers)
    probe = callback.probe
    found, judged = bp.findings(probe), bp.verdict(probe)
    assert judged.status == "vanishing" and any(f.severity == "error" for f in found)
    text = findings_text(judged, found)
    counts = {
        f"backprobe/findings/{name}": float(sum(name in (f.severity, f.kind) for f in found))
        for name in ("info", "warning", "error", *{f.kind for f in found})
    }
    expected = {"backprobe/verdict": float(VERDICT_CODES.index("vanishing")), **counts}

    import csv

    with open(f"{loggers[0].log_dir}/metrics.csv") as file:
        (row,) = [r for r in csv.DictReader(file) if r.get("backprobe/verdict")]
    assert int(row["step"]) == STEPS
    assert {k: float(row[k]) for k in expected} == expected

    events = EventAccumulator(loggers[1].log_dir, size_guidance={"tensors": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("backprobe/findings/error")] == [
        (STEPS, expected["backprobe/findings/error"])
    ]
    (event,) = events.Tensors("backprobe/findings/text_summary")  # add_text's tag
    assert event.step == STEPS and event.tensor_proto.string_val[0].decode() == text

    client = loggers[2].experiment
    run = client.get_run(loggers[2].run_id)
    assert run.data.metrics["backprobe/verdict"] == expected["backprobe/verdict"]
    artifact = client.download_artifacts(loggers[2].run_id, "backprobe/findings.md", str(tmp_path))
    assert Path(artifact).read_text() == text


def test_every_hook_is_marked_as_overriding_lightnings_callback():
    hooks = [n for n in vars(BackprobeCallback) if n.startswith("on_") or n.endswith("state_dict")]
    assert len(hooks) == 7
    for name in hooks:
        assert getattr(L.Callback, name)  # a hook Lightning calls
        assert getattr(vars(BackprobeCallback)[name], "__override__", False), name
