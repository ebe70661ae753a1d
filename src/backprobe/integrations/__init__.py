"""Thin adapters over the Probe for the places people train.

- :mod:`.lightning`: ``BackprobeCallback`` for ``lightning.Trainer``;
- :mod:`.transformers`: ``BackprobeTrainerCallback`` for the Hugging Face ``Trainer``;
- :mod:`.distributed`: global statistics under ``torch.distributed`` (DDP, FSDP2).

Nothing here is imported by ``import backprobe``; each module imports its framework only
when used, so that none of them is a dependency of the core.
"""
