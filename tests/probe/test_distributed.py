"""torch.distributed: 2 CPU processes on gloo record what one process records on the
global batch (DDP and FSDP2), and only rank 0 writes the run database."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import backprobe as bp
from backprobe.probe.distributed import is_primary, local_shard, process_group, unwrap

from . import _distributed_worker as worker

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

#: Stored series are float32; the ranks add their sums in another order than one process.
RTOL = 1e-5


def max_relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    both = np.isfinite(a) & np.isfinite(b)
    scale = np.maximum(np.abs(a[both]), np.abs(b[both]))
    diff = np.abs(a[both] - b[both])
    return float(np.max(np.where(scale > 0, diff / np.where(scale > 0, scale, 1), 0), initial=0))


@pytest.fixture(scope="module")
def distributed_runs(tmp_path_factory):
    """Spawn 2 ranks once for all tests of this module; returns their output folder."""
    out = tmp_path_factory.mktemp("ddp")
    context = mp.spawn(worker.run_rank, args=(2, str(out / "init"), str(out)), nprocs=2, join=False)
    for _ in range(240):  # at most 2 minutes: a hung collective fails instead of hanging
        if context.join(timeout=0.5):
            break
    else:
        for process in context.processes:
            process.kill()
        pytest.fail("the 2 distributed ranks did not finish within 2 minutes")
    return out


@pytest.fixture(scope="module")
def single():
    return worker.train_single()


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_rank_0_writes_global_statistics(distributed_runs, single, mode):
    run = bp.open_run(distributed_runs / "runs.db", mode)
    assert run.layers == ["0", "1", "2", "3", "4", "5"]
    assert list(run.steps) == [0, 1, 2]
    worst = {}
    for stat in worker.SERIES:
        stored, expected = run.history(stat), single[stat]
        np.testing.assert_array_equal(np.isnan(stored), np.isnan(expected), err_msg=stat)
        np.testing.assert_allclose(stored, expected, rtol=RTOL, atol=1e-12, err_msg=stat)
        worst[stat] = max_relative_difference(stored, expected)
    print(f"{mode}: max relative difference to one process per statistic:", end=" ")
    print(", ".join(f"{stat} {value:.1e}" for stat, value in worst.items()))


@pytest.mark.parametrize("mode", ["ddp", "fsdp", "nan"])
def test_every_rank_holds_the_same_global_statistics(distributed_runs, mode):
    rank0 = np.load(distributed_runs / f"{mode}-rank0.npz")
    rank1 = np.load(distributed_runs / f"{mode}-rank1.npz")
    for stat in worker.SERIES:
        np.testing.assert_array_equal(rank0[stat], rank1[stat], err_msg=stat)


def test_dead_units_are_dead_on_every_rank(distributed_runs, single):
    """Input feature 1 is negative for every sample, feature 0 only on rank 0: globally one
    of the first ReLU's 6 units is dead, where rank 0 alone would count two."""
    run = bp.open_run(distributed_runs / "runs.db", "ddp")
    np.testing.assert_allclose(run.history("dead")[:, 0], 1 / 6)
    np.testing.assert_allclose(single["dead"][:, 0], 1 / 6)


def test_a_nan_on_one_rank_is_seen_by_every_rank(distributed_runs):
    """Rank 1's last sample holds a NaN: every rank counts that sample in every layer
    after the input and names layer 0's forward as the first non-finite value, as one
    process does."""
    single = worker.train_single(nan=True)
    ranks = [np.load(distributed_runs / f"nan-rank{r}.npz") for r in (0, 1)]
    for stat in ("nonfinite_out", "nonfinite_grad", "first_nonfinite"):
        for rank in ranks:
            np.testing.assert_array_equal(rank[stat], single[stat], err_msg=stat)
    assert single["first_nonfinite"].tolist() == [[0, 0]]
    assert single["nonfinite_out"][0].tolist() == [1, 1, 1, 1, 1, 1]
    assert np.isnan(single["loss"][0])


def test_only_rank_0_writes_the_run_database(distributed_runs):
    from backprobe.store import RunDatabase

    with RunDatabase(distributed_runs / "runs.db", read_only=True) as db:
        assert sorted(r.name for r in db.runs()) == ["ddp", "fsdp", "nan"]
        assert all(r.status == "finished" for r in db.runs())


def test_single_process_helpers():
    """Without an initialised process group nothing is reduced and this process writes."""
    model = nn.Linear(2, 2)
    assert process_group() is None
    assert is_primary()
    assert unwrap(model) is model
    assert unwrap(nn.DataParallel(model)) is model
    weight, shards = local_shard(model.weight)
    assert weight is model.weight and shards == 1
