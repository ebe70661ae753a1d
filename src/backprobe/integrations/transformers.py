"""Hugging Face: ``BackprobeTrainerCallback`` records gradient health in ``Trainer.train``.

::

    import backprobe as bp
    from backprobe.integrations.transformers import BackprobeTrainerCallback

    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    callback = BackprobeTrainerCallback(every=10).install(trainer)
    trainer.train()
    bp.summary(callback.probe)

The probe watches the model and records at ``on_pre_optimizer_step``: after backward of
every accumulated micro-batch and after gradient clipping (the global norm it leaves is
stored as ``grad_norm_postclip``; this is where the Trainer unscales mixed-precision
gradients), before the optimizer step and ``zero_grad``. :meth:`~BackprobeTrainerCallback.install`
also stores the Trainer's own ``grad_norm`` (the one before clipping) as
``grad_norm_preclip``, hands the statistics to the ``report_to`` targets and fails the run
the moment ``train()`` raises.

The chosen statistics (:mod:`~backprobe.integrations.metrics`) of the last recorded step
join the Trainer's next log (``state.log_history`` and, installed, every ``report_to``
target). The Trainer's last log, its training summary after the last step, gets the
verdict's code, the count of findings by severity and kind, and the findings as text
(``backprobe/findings``: TensorBoard shows it in its text tab, W&B keeps the string,
MLflow's callback drops strings). The run is named after ``run_name``, stored under
``output_dir`` with the ``TrainingArguments``; each checkpoint's ``trainer_state.json``
keeps its id, and ``train(resume_from_checkpoint=…)`` continues it at the checkpoint's
global step.

Without clipping, fp16 gradients are still scaled there; the probe then divides the
GradScaler's scale out itself. The loss stored with a step is the one the model returned
(``outputs.loss``): the mean over the accumulated micro-batches, or their sum when the
Trainer normalised it by the step's number of items. Under DDP every rank runs the
callback, the statistics are global and rank 0 writes the run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from ._driver import DriverCallback, missing_framework
from .metrics import global_grad_norm

try:
    from transformers import Trainer, TrainerCallback
except ImportError as error:
    raise missing_framework("transformers", "transformers", "transformers") from error


#: The entry of ``TrainerState.stateful_callbacks`` (saved in each checkpoint's
#: ``trainer_state.json``) that holds the callback's :meth:`~DriverCallback.state`. Not a
#: class name: the Trainer rebuilds the callbacks it finds by class name there when
#: ``restore_callback_states_from_checkpoint`` is set, and this one must stay the user's.
STATE_KEY = "backprobe"

#: A key of the Trainer's last log only (its training summary, logged after the last step).
FINAL_LOG_KEY = "train_runtime"


class BackprobeTrainerCallback(DriverCallback, TrainerCallback):
    """Attach a :class:`~backprobe.Probe` to the model a ``transformers.Trainer`` trains.

    Takes the options of :class:`~backprobe.integrations._driver.DriverCallback`
    (``every`` counts optimizer steps; the run's name defaults to ``run_name``, else the
    model's class name). The GradScaler is taken from the Trainer's optimizer, and so is
    the optimizer whose updates ``updates=True`` measures.

    After ``train``, ``callback.probe`` reads the run (``history``, ``summary``, …).
    Hand it to the Trainer with :meth:`install` (or, with less, in ``callbacks=[…]``).
    """

    #: the hook that catches the model's loss, while training runs
    _loss_hook: RemovableHandle | None = None
    #: whether the Trainer divided the loss by the step's item count
    _normalised = False

    def install(self, trainer: Trainer) -> BackprobeTrainerCallback:
        """Add this callback to ``trainer`` so that it gets what ``callbacks=[…]`` cannot
        give it; returns the callback.

        - It runs first of the Trainer's callbacks: the statistics it adds to a log reach
          every ``report_to`` target (TensorBoard, W&B, MLflow, …), which the Trainer
          otherwise calls before the callbacks a user passes.
        - The Trainer's own ``grad_norm`` (the global norm before clipping, unscaled under
          fp16, the one it logs) is stored with each recorded step as
          ``grad_norm_preclip`` (a Trainer older than transformers 5 does not tell it).
        - When ``trainer.train()`` raises, the run is marked failed and the probe
          detached at once, before the exception reaches the caller.

        Installing the same callback twice on a Trainer changes nothing.
        """
        handler = trainer.callback_handler
        handler.callbacks = [self, *(c for c in handler.callbacks if c is not self)]
        if hasattr(trainer, "_get_grad_norm"):
            _wrap(trainer, "_get_grad_norm", self._grad_norm_taken)
        _wrap(trainer, "train", self._train_around)
        return self

    def _grad_norm_taken(self, get_grad_norm: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Around ``Trainer._get_grad_norm``: the norm it returns is the pre-clip one."""
        norm = get_grad_norm(*args, **kwargs)
        if norm is not None:
            self._driver.clipping(norm if isinstance(norm, torch.Tensor) else float(norm), None)
        return norm

    def _train_around(self, train: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Around ``Trainer.train``: an exception fails the run before it propagates."""
        try:
            return train(*args, **kwargs)
        except BaseException as error:
            self._end(error)
            raise

    @override
    def on_train_begin(self, args, state, control, model: nn.Module | None = None, **kwargs):
        # The Trainer tells no callback about an exception: a run still open here is one
        # whose train() raised (and was caught). It failed; this train() starts clean.
        if self.probe is not None and self.probe.attached:
            self._end(RuntimeError("train() raised before it ended; train() was called again"))
        if model is None:
            return
        # resumed from a checkpoint: its trainer_state.json names the run to continue
        saved = state.stateful_callbacks.get(STATE_KEY) if state.global_step > 0 else None
        if isinstance(saved, dict):
            self.restore(saved)
        # accelerate's AcceleratedOptimizer carries the GradScaler of fp16 training and
        # wraps the torch optimizer, whose step() the probe's step hooks watch
        wrapper = kwargs.get("optimizer")
        scaler = getattr(wrapper, "scaler", None)
        optimizer = getattr(wrapper, "optimizer", wrapper)
        self._driver.start(
            model,
            scaler=scaler if isinstance(scaler, torch.amp.GradScaler) else None,
            optimizer=optimizer
            if self.updates and isinstance(optimizer, torch.optim.Optimizer)
            else None,
            root=args.output_dir or ".",
            name=args.run_name or type(model).__name__,
            config={"training_arguments": args.to_dict()},
            first_step=state.global_step,
        )
        # saved with every checkpoint's TrainerState, beside the stateful callbacks' own
        state.stateful_callbacks[STATE_KEY] = self.state()
        self._loss_hook = model.register_forward_hook(self._catch_loss, with_kwargs=True)

    def _catch_loss(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return  # evaluation, or a checkpointed segment's recomputation
        loss = output.get("loss") if isinstance(output, Mapping) else None
        if isinstance(loss, torch.Tensor):
            self._normalised = kwargs.get("num_items_in_batch") is not None
            self._driver.add_loss(loss)

    @override
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        # after the Trainer's clipping: the norm it leaves, labelled as such
        if model is not None:
            self._driver.clipping(None, global_grad_norm(list(model.parameters())))
        self._driver.step(mean=not self._normalised)

    @override
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not state.log_history:
            return
        # the statistics of the last recorded step join the Trainer's log of this step
        latest = self._driver.metrics.take()
        added: dict[str, float | str] = {} if latest is None else dict(latest[1])
        if FINAL_LOG_KEY in logs:
            # The Trainer's last log, after its last step: nothing is logged after it
            # (on_train_end comes later), so the run is closed and judged here.
            values, texts = self._end()
            added.update(values)
            added.update(texts)
        logs.update(added)
        state.log_history[-1].update(added)

    @override
    def on_train_end(self, args, state, control, **kwargs):
        self._end()

    def _end(self, error: BaseException | None = None) -> tuple[dict[str, float], dict[str, str]]:
        """Remove the loss hook and close the run, finished or failed with ``error``;
        returns what the logs get about it (see
        :meth:`~backprobe.integrations._driver.ProbeDriver.close`)."""
        if self._loss_hook is not None:
            self._loss_hook.remove()
            self._loss_hook = None
        return self._driver.close(error)


def _wrap(trainer: Trainer, method: str, around: Callable[..., Any]) -> None:
    """Replace ``trainer.<method>`` (on this Trainer only) by ``around(original, *args,
    **kwargs)``; a method already wrapped by the same ``around`` stays as it is."""
    original = getattr(trainer, method)
    if getattr(original, "__backprobe_around__", None) == around:
        return

    @functools.wraps(original)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return around(original, *args, **kwargs)

    wrapped.__backprobe_around__ = around  # type: ignore[attr-defined]  # a marker on the function
    setattr(trainer, method, wrapped)
