"""The TensorBoard sink: what a probe records, read back from the event files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from backprobe import Probe, open_run
from backprobe.errors import ProbeConfigError
from backprobe.integrations.scalars import SCALAR_STATS
from backprobe.integrations.tensorboard import (
    TensorBoardSink,
    device_histograms,
    write_run,
)

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)
from torch.utils.tensorboard import SummaryWriter


def read_events(logdir) -> EventAccumulator:
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def train(model: nn.Module, probe: Probe, steps: int, on_step=None) -> None:
    """SGD on random regression batches; ``on_step(step)`` runs after ``probe.step``."""
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with probe:
        for step in range(steps):
            x, y = torch.randn(16, 4, generator=gen), torch.randn(16, 2, generator=gen)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            probe.record_scalar("lr", 0.1 * (step + 1))
            probe.step(loss)
            if on_step is not None:
                on_step(step)
            opt.step()
            opt.zero_grad()


def assert_scalars_match(events: EventAccumulator, run) -> int:
    """Every per-layer statistic of ``run`` is a scalar series of its own (NaN left out),
    and so are the loss and the user scalars. Returns the number of series checked."""
    tags = set(events.Tags()["scalars"])
    checked = 0
    for stat in SCALAR_STATS:
        history = run.history(stat)
        for j, layer in enumerate(run.layers):
            tag = f"backprobe/{stat}/{layer}"
            kept = ~np.isnan(history[:, j])
            if not kept.any():
                assert tag not in tags
                continue
            written = events.Scalars(tag)
            assert [e.step for e in written] == run.steps[kept].tolist()
            np.testing.assert_allclose(
                [e.value for e in written], history[kept, j], rtol=1e-6, err_msg=tag
            )
            checked += 1
    for name in ("loss", "lr"):
        written = events.Scalars(f"backprobe/{name}")
        assert [e.step for e in written] == run.steps.tolist()
        np.testing.assert_allclose([e.value for e in written], run.history(name), rtol=1e-6)
    return checked


def test_scalars_per_layer_and_statistic_read_back(tmp_path):
    model = make_model()
    writer = SummaryWriter(tmp_path / "tb")
    probe = Probe(model, db=None, every=2, sinks=[TensorBoardSink(writer)])
    train(model, probe, steps=5)
    writer.close()
    events = read_events(tmp_path / "tb")
    assert probe.steps.tolist() == [0, 2, 4]  # only recorded steps reach the sink
    checked = assert_scalars_match(events, probe)
    # weights and gradients of 3 Linear layers, signals of all 5 layers, activations …
    assert checked > 5 * 4
    assert "backprobe/saturated/1" in events.Tags()["scalars"]  # the Tanh
    assert "backprobe/dead/3" in events.Tags()["scalars"]  # the ReLU
    assert not any(t.startswith("backprobe/saturated/0") for t in events.Tags()["scalars"])


def test_histograms_on_their_own_schedule_match_the_tensors(tmp_path):
    model = make_model()
    writer = SummaryWriter(tmp_path / "tb")
    sink = TensorBoardSink(writer, histogram_every=2, bins=12)
    probe = Probe(model, db=None, sinks=[sink])
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def keep(step: int) -> None:  # the tensors the histograms must describe
        first = model[0]
        seen[step] = {
            "grad": torch.cat([first.weight.grad.reshape(-1), first.bias.grad.reshape(-1)]),
            "weight": torch.cat([first.weight.reshape(-1), first.bias.reshape(-1)]).detach(),
        }

    train(model, probe, steps=3, on_step=keep)
    writer.close()
    events = read_events(tmp_path / "tb")
    tags = events.Tags()["histograms"]
    assert sorted(tags) == sorted(f"backprobe/{k}/{i}" for k in ("grad", "weight") for i in "024")
    for kind in ("grad", "weight"):
        written = events.Histograms(f"backprobe/{kind}/0")
        assert [e.step for e in written] == [0, 2]
        for event in written:
            values = seen[event.step][kind].double().numpy()
            h = event.histogram_value
            assert h.num == values.size
            assert h.min == pytest.approx(values.min()) and h.max == pytest.approx(values.max())
            assert h.sum == pytest.approx(values.sum(), abs=1e-9)
            assert h.sum_squares == pytest.approx(values @ values)
            edges = np.asarray(h.bucket_limit)
            expected, _ = np.histogram(values, bins=edges)
            assert h.bucket[0] == 0 and len(h.bucket) == len(edges)
            # a value on a bucket edge may fall either side of it after rounding
            assert np.abs(np.asarray(h.bucket[1:]) - expected).sum() <= 2
            assert sum(h.bucket) == values.size


def test_a_sparse_gradient_histogram_counts_its_coalesced_values(tmp_path):
    """nn.Embedding(sparse=True): a repeated index sums into one value, as in the dense
    gradient; rows never looked up are not values of the sparse gradient."""
    model = nn.Sequential(nn.Embedding(10, 3, sparse=True), nn.Flatten(), nn.Linear(9, 1))
    writer = SummaryWriter(tmp_path / "tb")
    probe = Probe(model, db=None, sinks=[TensorBoardSink(writer, histogram_every=1)])
    with probe:
        model(torch.tensor([[1, 1, 4]])).sum().backward()
        dense = model[0].weight.grad.to_dense()
        probe.step()
    writer.close()
    (event,) = read_events(tmp_path / "tb").Histograms("backprobe/grad/0")
    looked_up = dense[[1, 4]].double().numpy().reshape(-1)
    h = event.histogram_value
    assert h.num == looked_up.size == 6
    assert h.sum == pytest.approx(looked_up.sum())
    assert h.sum_squares == pytest.approx(looked_up @ looked_up)


def test_device_histograms_leave_non_finite_values_out():
    row = device_histograms([torch.tensor([1.0, 2.0, float("nan"), float("inf"), 3.0])], 2)[0]
    low, high, count, total, squares = row[:5].tolist()
    assert (low, high, count, total, squares) == (1.0, 3.0, 3.0, 6.0, 14.0)
    assert row[5:].tolist() == [1.0, 2.0]  # [1, 2) and [2, 3]
    empty = device_histograms([torch.zeros(0)], 3)[0]
    assert empty[2] == 0


def test_a_stored_run_written_after_the_fact(tmp_path):
    model = make_model()
    probe = Probe(model, db=tmp_path / "runs.db", every=1)
    train(model, probe, steps=3)
    run = open_run(tmp_path / "runs.db", probe.run_id)
    writer = SummaryWriter(tmp_path / "tb")
    assert write_run(run, writer) == 3
    writer.close()
    assert assert_scalars_match(read_events(tmp_path / "tb"), run) > 5 * 4


def test_sink_refuses_what_is_not_a_writer():
    with pytest.raises(ProbeConfigError, match="SummaryWriter"):
        TensorBoardSink(object())
    with pytest.raises(ProbeConfigError, match="bins"):
        TensorBoardSink(SummaryWriter.__new__(SummaryWriter), bins=0)


def test_probe_refuses_a_bare_writer_as_a_sink(tmp_path):
    writer = SummaryWriter(tmp_path / "tb")
    with pytest.raises(ProbeConfigError, match=r"TensorBoardSink\(writer\)"):
        Probe(make_model(), db=None, sinks=[writer])
    writer.close()


class TinyRNN(nn.Module):
    """nn.RNN with a small recurrent matrix (its memory fades within a few steps)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.RNN(3, 8, batch_first=True)
        self.head = nn.Linear(8, 1)
        with torch.no_grad():
            self.rnn.weight_hh_l0.mul_(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def test_memory_horizon_of_recurrent_layers(tmp_path):
    model = TinyRNN()
    writer = SummaryWriter(tmp_path / "tb")
    probe = Probe(model, db=None, every=2, sinks=[TensorBoardSink(writer)])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with probe:
        for _ in range(4):
            loss = model(torch.randn(4, 20, 3)).pow(2).mean()
            loss.backward()
            probe.step(loss)
            opt.step()
            opt.zero_grad()
    writer.close()
    horizon = probe.memory_horizon("rnn")
    assert np.isfinite(horizon).all() and (horizon > 0).all()
    written = read_events(tmp_path / "tb").Scalars("backprobe/memory_horizon/rnn")
    assert [e.step for e in written] == probe.steps.tolist() == [0, 2]
    assert [e.value for e in written] == horizon.tolist()
