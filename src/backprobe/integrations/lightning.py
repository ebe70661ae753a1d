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
mixed-precision gradients, before gradient clipping, the optimizer step and ``zero_grad``
(where Lightning measures its own gradient norms). The global gradient norm is stored
before clipping (``grad_norm_preclip``) and as Lightning's ``gradient_clip_val`` and
``gradient_clip_algorithm`` leave it (``grad_norm_postclip``; left out when the module
overrides ``configure_gradient_clipping``).

A few statistics (:mod:`~backprobe.integrations.metrics`) go to the trainer's loggers
through ``pl_module.log`` at each recorded step, on Lightning's step axis (they reach
the loggers every ``log_every_n_steps``, and ``trainer.callback_metrics``). When training
ends every logger gets the verdict's code and the count of findings by severity and
kind at the last global step, and the loggers that take text the findings as text
(TensorBoard's text tab, an MLflow artifact ``backprobe/findings.md``; CSV has no place
for it). Everything stays in the run database. The run is named after the
logger's version, a relative ``db`` lies under ``default_root_dir``, and the module's
``hparams`` are stored with the run. A checkpoint keeps the run's id: a fit resumed from
it continues the same run at the checkpoint's global step. An exception in ``fit``
marks the run failed and removes the probe's hooks; the next ``fit`` starts a new run.

The loss stored with a step is the one Lightning back-propagated (divided by
``accumulate_grad_batches`` and summed over the micro-batches, i.e. their mean), with a
GradScaler's loss scale divided out. Under DDP every rank runs the callback, the
statistics are global and rank 0 writes the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from ._driver import DriverCallback, missing_framework
from .metrics import global_grad_norm, norm_clipped, value_clipped

if TYPE_CHECKING:  # one package's types stand for both names, which share one API
    from lightning.pytorch import Callback, LightningModule, Trainer
    from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
else:
    try:
        from lightning.pytorch import Callback, LightningModule, Trainer
        from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
    except ImportError:  # the older package name
        try:
            from pytorch_lightning import Callback, LightningModule, Trainer
            from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger
        except ImportError as error:
            raise missing_framework("lightning", "Lightning", "lightning") from error


class BackprobeCallback(DriverCallback, Callback):
    """Attach a :class:`~backprobe.Probe` to the trained ``LightningModule``.

    Takes the options of :class:`~backprobe.integrations._driver.DriverCallback`
    (``every`` counts optimizer steps), each settable from a LightningCLI config. The
    GradScaler is taken from the trainer; ``updates=True`` measures the updates of its
    optimizer (of the first, when the module configures several).

    After ``fit``, ``callback.probe`` reads the run (``history``, ``summary``, …).
    """

    #: the GradScaler of mixed-precision training, while training runs
    _scaler: torch.amp.GradScaler | None = None

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._scaler = scaler if isinstance(scaler, torch.amp.GradScaler) else None
        logger = trainer.logger
        if logger is None:
            name = type(pl_module).__name__
        else:
            version = logger.version
            version = version if isinstance(version, str) else f"version_{version}"
            name = f"{logger.name}/{version}" if logger.name else version
        optimizers = trainer.optimizers
        self._driver.start(
            pl_module,
            scaler=self._scaler,
            optimizer=optimizers[0] if self.updates and optimizers else None,
            root=trainer.default_root_dir,
            name=name,
            config={"hparams": dict(pl_module.hparams)},
            first_step=trainer.global_step,
        )

    @override
    def on_before_backward(
        self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor
    ) -> None:
        # Lightning hands over the loss it back-propagates: multiplied by the loss scale
        # under a GradScaler. Its scale as a device tensor: get_scale() would synchronise.
        scaler = self._scaler
        if scaler is not None and scaler.is_enabled() and scaler._scale is not None:
            loss = loss.detach() / scaler._scale
        self._driver.add_loss(loss)

    @override
    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        preclip = global_grad_norm(params)
        self._driver.clipping(preclip, self._postclip(trainer, pl_module, params, preclip))
        if self._driver.step():
            latest = self._driver.metrics.take()
            if latest is not None and latest[1]:
                pl_module.log_dict(latest[1], on_step=True, on_epoch=False)

    @staticmethod
    def _postclip(
        trainer: Trainer,
        pl_module: LightningModule,
        params: list[torch.Tensor],
        preclip: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """The global gradient norm Lightning's own clipping leaves (None when the module
        clips its own way)."""
        if preclip is None:
            return None
        own = type(pl_module).configure_gradient_clipping
        if own is not LightningModule.configure_gradient_clipping:
            return None
        clip = trainer.gradient_clip_val
        if not clip:
            return preclip
        if str(trainer.gradient_clip_algorithm) in ("value", "GradClipAlgorithmType.VALUE"):
            return value_clipped(params, float(clip))
        return norm_clipped(preclip, float(clip))

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning takes no pl_module.log here: the loggers are written to directly
        values, texts = self._driver.close()
        for logger in trainer.loggers:
            if values:
                logger.log_metrics(values, step=trainer.global_step)
            for tag, text in texts.items():
                _log_text(logger, tag, text, trainer.global_step)

    @override
    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._driver.close(exception)

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.state()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restore(state_dict)


def _log_text(logger: Logger, tag: str, text: str, step: int) -> None:
    """Write ``text`` where ``logger`` takes text: TensorBoard's text tab (``tag``), the
    MLflow run's artifact ``<tag>.md``; other loggers (CSV, …) have no place for it."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_text(tag, text, step)
    elif isinstance(logger, MLFlowLogger):
        logger.experiment.log_text(logger.run_id, text, f"{tag}.md")
