"""Thin adapters over the Probe for the places people train.

- :mod:`.lightning`: ``BackprobeCallback`` for ``lightning.Trainer``;
- :mod:`.transformers`: ``BackprobeTrainerCallback`` for the Hugging Face ``Trainer``;
- :mod:`.tensorboard`: ``TensorBoardSink``, the probe's statistics and histograms in
  TensorBoard, live or from a stored run.

Statistics under ``torch.distributed`` (DDP, FSDP2) are the probe's own business:
:mod:`backprobe.probe.distributed`.

Nothing here is imported by ``import backprobe``; each module imports its framework only
when used, so that none of them is a dependency of the core.
"""
