"""What each rank of the distributed tests runs (imported by the spawned processes).

The same model, data and loop as :func:`train_single`, which runs them on the global batch
in one process; the ranks split each batch in halves and wrap the model in DDP or FSDP2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from backprobe import Probe
from backprobe.store.view import LAYER_SERIES

STEPS = 3
BATCH = 8  # the global batch; each of 2 ranks gets 4 samples
SERIES = (*LAYER_SERIES, "loss", "first_nonfinite")


def make_model() -> nn.Module:
    """ReLU on the inputs first (planted dead units), then Linear → Tanh → Linear."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.ReLU(), nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def make_batches(nan: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Global batches [BATCH, 6]. Feature 1 is negative everywhere (its ReLU unit is dead on
    every rank); feature 0 only in the first half of each batch (dead on rank 0 alone,
    alive globally). With ``nan``, one step whose last sample (on rank 1) holds a NaN."""
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(STEPS):
        x = torch.randn(BATCH, 6, generator=gen)
        x[:, 1] = -x[:, 1].abs()
        x[: BATCH // 2, 0] = -x[: BATCH // 2, 0].abs()
        x[BATCH // 2 :, 0] = x[BATCH // 2 :, 0].abs()
        y = torch.randn(BATCH, 3, generator=gen)
        batches.append((x, y))
    if nan:
        batches[0][0][-1, 2] = float("nan")
        return batches[:1]
    return batches


def train(model: nn.Module, probe: Probe, batches, rank: int = 0, world: int = 1) -> None:
    """SGD on the mean squared error; each rank sees its slice of every global batch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    part = BATCH // world
    with probe:
        for x, y in batches:
            xs, ys = x[rank * part : (rank + 1) * part], y[rank * part : (rank + 1) * part]
            loss = nn.functional.mse_loss(model(xs), ys)
            loss.backward()
            probe.step(loss)
            opt.step()
            opt.zero_grad()


def histories(probe: Probe) -> dict[str, np.ndarray]:
    return {stat: probe.history(stat) for stat in SERIES}


def train_single(nan: bool = False) -> dict[str, np.ndarray]:
    """The reference: one process, the global batch."""
    model = make_model()
    probe = Probe(model, db=None)
    train(model, probe, make_batches(nan))
    return histories(probe)


def run_rank(rank: int, world: int, init_file: str, out: str) -> None:
    """Entry point of ``torch.multiprocessing.spawn``: DDP then FSDP2, 3 steps each, then
    one DDP step with a NaN in rank 1's data."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        db = Path(out) / "runs.db"
        ddp = DistributedDataParallel(make_model())
        probe = Probe(ddp, db=db, name="ddp")
        train(ddp, probe, make_batches(), rank, world)
        np.savez(Path(out) / f"ddp-rank{rank}.npz", **histories(probe))

        model = make_model()
        mesh = init_device_mesh("cpu", (world,))
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        probe = Probe(model, db=db, name="fsdp")
        train(model, probe, make_batches(), rank, world)
        np.savez(Path(out) / f"fsdp-rank{rank}.npz", **histories(probe))

        ddp = DistributedDataParallel(make_model())
        probe = Probe(ddp, db=db, name="nan")
        train(ddp, probe, make_batches(nan=True), rank, world)
        np.savez(Path(out) / f"nan-rank{rank}.npz", **histories(probe))
    finally:
        # Both ranks leave together: a rank that tears gloo down while the other still
        # talks to it aborts ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()
