"""The sentinel: the loss, gradient norms and output-gradient samples of every step,
recorded or not, equal to a hand computation, stored with the run and read back."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch
from torch import nn

import backprobe as bp
from backprobe.store import RunDatabase
from backprobe.store.sentinel import TOP_SAMPLES, SentinelSeries


def never(step: int) -> bool:
    return False


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 7), nn.Tanh(), nn.Linear(7, 2))


def by_hand(net: nn.Sequential, steps: int, make_probe=None, **probe_kwargs):
    """Train ``steps`` SGD steps; return the probe and, per step, the loss, each parameter
    layer's gradient norm, the global norm and the per-sample output-gradient norms."""
    probe = None if make_probe is None else make_probe(net, **probe_kwargs)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    expected = []
    if probe is not None:
        probe.attach()
    for _ in range(steps):
        x, y = torch.randn(6, 5, generator=g), torch.randn(6, 2, generator=g)
        out = net(x)
        grads: list[torch.Tensor] = []
        out.register_hook(grads.append)
        loss = (out - y).pow(2).mean()
        loss.backward()
        layers = [
            torch.sqrt(sum(p.grad.double().pow(2).sum() for p in m.parameters()))
            for m in net
            if any(True for _ in m.parameters())
        ]
        total = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in net.parameters()))
        expected.append(
            (
                loss.item(),
                np.array([float(v) for v in layers]),
                float(total),
                grads[0].double().norm(dim=1).numpy(),
            )
        )
        if probe is not None:
            probe.step(loss)
        opt.step()
        opt.zero_grad()
    return probe, expected


@pytest.mark.parametrize("every", [1, never, 3], ids=["every step", "never", "every 3"])
def test_every_step_has_its_loss_norms_and_samples_whatever_the_schedule(make_probe, every):
    probe, expected = by_hand(model(), 7, make_probe, every=every)
    sentinel = probe.sentinel
    assert sentinel.steps.tolist() == list(range(7))
    assert sentinel.layers == ("0", "2", "4")  # the layers owning parameters
    for row, (loss, layers, total, samples) in enumerate(expected):
        assert sentinel.field("loss")[row] == pytest.approx(loss, rel=1e-6)
        np.testing.assert_allclose(sentinel.layer_grad_norm[row], layers, rtol=1e-5)
        assert sentinel.field("grad_norm")[row] == pytest.approx(total, rel=1e-5)
        assert sentinel.field("gradients")[row] == 6
        assert sentinel.field("samples")[row] == 6
        assert sentinel.field("out_grad_norm")[row] == pytest.approx(
            np.linalg.norm(samples), rel=1e-5
        )
        assert sentinel.field("out_grad_median")[row] == pytest.approx(np.median(samples), rel=1e-5)
        order = np.argsort(-samples, kind="stable")
        assert sentinel.top_samples[row, :6].tolist() == order.tolist()
        assert (sentinel.top_samples[row, 6:] == -1).all()
        np.testing.assert_allclose(sentinel.top_norms[row, :6], samples[order], rtol=1e-5)


@pytest.mark.parametrize("every, read", [(1, 0), (never, 6)], ids=["recorded", "unrecorded"])
def test_a_recorded_step_reads_the_gradients_once(make_probe, monkeypatch, every, read):
    """At a recorded step the sentinel takes the norms the step's statistics just took;
    at other steps it reads the six gradients itself."""
    import backprobe.probe.sentinel as sentinel_module

    counted: list[int] = []
    own = sentinel_module.grouped_norms
    monkeypatch.setattr(
        sentinel_module, "grouped_norms", lambda values: counted.append(len(values)) or own(values)
    )
    by_hand(model(), 3, make_probe, every=every)
    assert counted == [read] * 3


def test_the_stored_run_reads_the_sentinel_back(tmp_path):
    db = tmp_path / "runs.db"
    probe = bp.Probe(model(), db=db, name="s", every=never)
    with probe:
        net = probe.model
        for _ in range(5):
            loss = net(torch.randn(3, 5)).pow(2).mean()
            loss.backward()
            probe.step(loss)
            net.zero_grad()
        live = probe.sentinel
    stored = bp.open_run(db, "s")
    assert stored.steps.size == 0 and stored.sentinel.steps.tolist() == list(range(5))
    np.testing.assert_array_equal(stored.sentinel.values, live.values)
    np.testing.assert_array_equal(stored.sentinel.layer_grad_norm, live.layer_grad_norm)
    assert stored.sentinel.layers == live.layers == ("0", "2", "4")


def test_two_forwards_in_a_step_give_the_samples_of_both(make_probe):
    net = model()
    probe = make_probe(net, every=never).attach()
    first, second = net(torch.randn(4, 5)), net(torch.randn(3, 5))
    # the largest output gradient: the second forward's sample 1, the step's sample 4 + 1
    (first.pow(2).mean() + second.pow(2).mean() + 100 * second[1].sum()).backward()
    probe.step()
    sentinel = probe.sentinel
    assert sentinel.field("samples")[0] == 7
    assert sentinel.top_samples[0, 0] == 5
    assert np.isnan(sentinel.field("loss")[0])  # none given


class Wrapped(nn.Module):
    """Returns a dict with its 0-d loss first, like a Hugging Face ModelOutput."""

    def __init__(self) -> None:
        super().__init__()
        self.net = model()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        return {"loss": logits.pow(2).mean(), "logits": logits}


def test_the_output_gradient_is_that_of_the_logits_not_of_a_returned_loss(make_probe):
    net = Wrapped()
    probe = make_probe(net, every=never).attach()
    out = net(torch.randn(5, 5))
    out["loss"].backward()
    probe.step(out["loss"])
    sentinel = probe.sentinel
    assert sentinel.field("samples")[0] == 5  # the logits' first dimension


def test_a_step_before_backward_has_no_gradient_and_no_samples(make_probe):
    probe = make_probe(model(), every=never).attach()
    probe.step(0.5)
    sentinel = probe.sentinel
    assert sentinel.field("gradients")[0] == 0 and np.isnan(sentinel.field("grad_norm")[0])
    assert np.isnan(sentinel.layer_grad_norm[0]).all() and sentinel.field("samples")[0] == 0
    assert sentinel.field("loss")[0] == 0.5


def test_a_resumed_run_replaces_the_sentinel_from_its_first_step(tmp_path):
    db = tmp_path / "runs.db"

    def train(probe: bp.Probe, steps: range, scale: float) -> None:
        with probe:
            for _ in steps:
                loss = scale * probe.model(torch.randn(2, 5)).pow(2).mean()
                loss.backward()
                probe.step(loss)
                probe.model.zero_grad()

    first = bp.Probe(model(), db=db, name="r", every=2)
    train(first, range(6), 1.0)
    train(bp.Probe(model(), db=db, every=2, resume="r", first_step=4), range(4, 8), 1e6)
    sentinel = bp.open_run(db, "r").sentinel
    assert sentinel.steps.tolist() == list(range(8))
    loss = sentinel.field("loss")
    assert (loss[:4] < 1e3).all() and (loss[4:] > 1e3).all()  # steps 4, 5 replaced


def test_a_file_made_before_the_sentinel_reads_without_one_and_gets_it_when_written(tmp_path):
    db = tmp_path / "runs.db"
    with bp.Probe(model(), db=db, name="old", every=1) as probe:
        loss = probe.model(torch.randn(2, 5)).pow(2).mean()
        loss.backward()
        probe.step(loss)
    with sqlite3.connect(db) as conn:  # as a file written before the sentinel existed
        conn.execute("DROP TABLE sentinel")
        conn.execute("DROP TABLE events")
    run = bp.open_run(db, "old")
    assert len(run.sentinel) == 0 and run.events == [] and run.steps.tolist() == [0]
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "sentinel" not in tables  # a reader changed nothing
    RunDatabase(db).close()  # a writer adds the tables
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"sentinel", "events"} <= tables


def test_events_are_stored_with_the_run(tmp_path, make_probe):
    db = tmp_path / "runs.db"
    probe = bp.Probe(model(), db=db, name="e", every=never)
    with probe:
        loss = probe.model(torch.randn(2, 5)).pow(2).mean()
        loss.backward()
        probe.step(loss)
        probe.record_event("skip", {"reason": "test", "samples": [1]})
        assert [(e.step, e.kind) for e in probe.events] == [(0, "skip")]
    (event,) = bp.open_run(db, "e").events
    assert (event.step, event.kind, event.detail) == (0, "skip", {"reason": "test", "samples": [1]})


def test_a_series_keeps_its_layout():
    layers = ("a", "b")
    row = np.arange(7 + 2 * TOP_SAMPLES + 2, dtype=np.float32)
    series = SentinelSeries.from_rows(np.array([3]), row[None], layers)
    assert series.field("loss")[0] == 0 and series.field("samples")[0] == 6
    assert series.top_samples[0].tolist() == list(range(7, 7 + TOP_SAMPLES))
    assert series.layer_grad_norm[0].tolist() == [row[-2], row[-1]]
    assert len(series.until(2)) == 0 and len(series.until(3)) == 1
    assert len(SentinelSeries.empty(layers)) == 0


def test_an_unrecorded_step_is_stored_at_the_next_step_or_when_asked(make_probe):
    """An unrecorded step's values travel to the host without a synchronisation and are
    stored when the next step() begins; asking for them (last_sentinel, the run's view,
    detach) reads them at once."""
    probe, expected = by_hand(model(), 3, make_probe, every=never)
    assert probe._pending is not None and probe._pending.step == 2  # still on its way
    step, row = probe.last_sentinel
    assert step == 2 and probe._pending is None
    assert row[0] == pytest.approx(expected[2][0], rel=1e-6)  # the loss, the row's first field
    assert probe.sentinel.steps.tolist() == [0, 1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_an_unrecorded_step_copies_into_pinned_memory_without_waiting(make_probe):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)).cuda()
    probe = make_probe(net, every=never).attach()
    x = torch.randn(6, 5, device="cuda")
    totals = []
    for _ in range(3):
        net.zero_grad()
        loss = net(x).pow(2).mean()
        loss.backward()
        totals.append(float(torch.cat([p.grad.reshape(-1) for p in net.parameters()]).norm()))
        probe.step(loss)
        pending = probe._pending
        assert pending.event is not None and pending.host.is_pinned()
    probe.close()
    np.testing.assert_allclose(probe.sentinel.field("grad_norm"), totals, rtol=1e-5)
