"""Lightning: ``BackprobeCallback`` records gradient health while ``Trainer.fit`` runs.

::

    import backprobe as bp
    from backprobe.integrations.lightning import BackprobeCallback

    callback = BackprobeCallback(every=10)
    trainer = lightning.Trainer(callbacks=[callback])
    trainer.fit(model)
    bp.summary(callback.probe)

The probe watches the ``LightningModule`` and records at ``on_before_optimizer_step``:
after backward (of every accumulated micro-batch) and after Lightning has unscaled
mixed-precision gradients, before the optimizer step and ``zero_grad``. The loss stored
with a step is the one Lightning back-propagated (divided by ``accumulate_grad_batches``
and summed over the micro-batches, i.e. their mean), with a GradScaler's loss scale
divided out. Under DDP every rank runs the
callback, the statistics are global and rank 0 writes the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ._driver import DriverCallback, missing_framework

if TYPE_CHECKING:  # one package's types stand for both names, which share one API
    from lightning.pytorch import Callback, LightningModule, Trainer
else:
    try:
        from lightning.pytorch import Callback, LightningModule, Trainer
    except ImportError:  # the older package name
        try:
            from pytorch_lightning import Callback, LightningModule, Trainer
        except ImportError as error:
            raise missing_framework("lightning", "Lightning", "lightning") from error


class BackprobeCallback(DriverCallback, Callback):
    """Attach a :class:`~backprobe.Probe` to the trained ``LightningModule``.

    Args:
        every, db, name: as for :class:`~backprobe.Probe` (``every`` counts optimizer
            steps); the run's name defaults to the module's class name.
        **probe_options: any other ``Probe`` option (``include``, ``exclude``,
            ``sinks``, ``time_every``, …). The GradScaler is taken from the trainer.

    After ``fit``, ``callback.probe`` reads the run (``history``, ``summary``, …).
    """

    #: the GradScaler of mixed-precision training, while training runs
    _scaler: torch.amp.GradScaler | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._scaler = scaler if isinstance(scaler, torch.amp.GradScaler) else None
        self._driver.start(pl_module, self._scaler)

    def on_before_backward(
        self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor
    ) -> None:
        # Lightning hands over the loss it back-propagates: multiplied by the loss scale
        # under a GradScaler. Its scale as a device tensor: get_scale() would synchronise.
        scaler = self._scaler
        if scaler is not None and scaler.is_enabled() and scaler._scale is not None:
            loss = loss.detach() / scaler._scale
        self._driver.add_loss(loss)

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._driver.step()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._driver.close()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._driver.close(exception)
