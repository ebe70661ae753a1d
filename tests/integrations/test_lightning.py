"""BackprobeCallback in a real lightning.Trainer records what a plain loop records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from backprobe import Probe
from backprobe.store.view import LAYER_SERIES

L = pytest.importorskip("lightning")
from backprobe.integrations.lightning import BackprobeCallback  # noqa: E402

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
