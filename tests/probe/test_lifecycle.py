"""Attaching, detaching and closing a probe; which steps it records and that it does no
work on the others."""

from __future__ import annotations

import functools
import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import backprobe as bp
from backprobe import BackprobeError
from backprobe.errors import ProbeConfigError
from backprobe.probe import probe as probe_module
from backprobe.probe.outputs import floating_tensors
from backprobe.probe.stats import StepBuffer

from .models import loss_fn, make_input, make_model
from .reference import Recorder, assert_matches, expected_stats


def hook_counts(model: nn.Module) -> list[int]:
    """Hooks of every kind on every module of ``model``."""
    return [
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    ]


def train_step(model, probe, kind="tanh_mlp"):
    loss = loss_fn(model(make_input(kind)))
    loss.backward()
    recorded = probe.step(loss)
    model.zero_grad()
    return recorded


# -- hooks -----------------------------------------------------------------------------------


def test_attach_registers_one_forward_hook_per_layer_and_one_on_the_model(make_probe):
    model = make_model("cnn")
    probe = make_probe(model)
    assert not probe.attached and sum(hook_counts(model)) == 0
    probe.attach()
    assert probe.attached
    hooked = {name for name, m in model.named_modules() if m._forward_hooks}
    # the root's hook is the sentinel's: the gradient at the model's output, every step
    assert hooked == {"", "conv1", "act1", "conv2", "act2", "head"}
    assert all(len(m._forward_hooks) <= 1 for m in model.modules() if m is not model)


def test_unrecorded_steps_run_only_the_sentinels_hook(make_probe):
    """The layers' hooks are there for recorded steps only; the model's (the sentinel's)
    stays for every step."""
    model = make_model("cnn")
    probe = make_probe(model, every=2).attach()  # step 0 recorded, 1 not, 2 recorded
    calls = {"layers": 0}
    on_forward = probe._on_forward

    def counted(*args):
        calls["layers"] += 1
        on_forward(*args)

    probe._on_forward = counted
    hooked = []
    for _ in range(3):
        hooked.append({name for name, m in model.named_modules() if m._forward_hooks})
        before = calls["layers"]
        recorded = train_step(model, probe, "cnn")
        assert (calls["layers"] > before) == recorded
    assert hooked[0] == hooked[2] == {"", "conv1", "act1", "conv2", "act2", "head"}
    assert hooked[1] == {""}
    assert probe.steps.tolist() == [0, 2]
    assert np.isfinite(probe.history("act_std")).all()


class _Pair(nn.Module):
    """A block candidate (a container's child with children) that is no residual block."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.act = nn.Linear(4, 4), nn.Tanh()

    def forward(self, x):
        return self.act(self.lin(x))


@pytest.mark.parametrize("every", [1, 2])
def test_entries_not_measured_by_their_output_lose_their_hooks(make_probe, every):
    """After the first recorded step fixed the roles, the next recorded step hooks only
    the entries measured by their output: not the candidates that are no blocks, whether
    or not an unrecorded step came between."""
    model = nn.Sequential(_Pair(), _Pair())
    probe = make_probe(model, every=every).attach()
    hooked = []
    for _ in range(3):
        hooked.append({name for name, m in model.named_modules() if m._forward_hooks})
        model(torch.randn(3, 4)).square().mean().backward()
        probe.step()
        model.zero_grad()
    layers = {"0.lin", "0.act", "1.lin", "1.act"}
    assert hooked[0] == {"", "0", "1"} | layers
    assert hooked[2] == {""} | layers


@pytest.mark.parametrize("how", ["detach", "close", "with"])
def test_hooks_are_fully_removed(how, make_probe):
    model = make_model("residual")
    probe = make_probe(model)
    if how == "with":
        with probe:
            train_step(model, probe, "residual")
    else:
        probe.attach()
        train_step(model, probe, "residual")
        getattr(probe, how)()
    assert sum(hook_counts(model)) == 0
    assert not probe.attached


def test_hooks_are_removed_when_the_loop_raises(make_probe):
    model = make_model("tanh_mlp")
    probe = make_probe(model)
    with pytest.raises(RuntimeError, match="boom"), probe:
        train_step(model, probe)
        raise RuntimeError("boom")
    assert sum(hook_counts(model)) == 0
    assert probe.steps.tolist() == [0]  # what was recorded stays readable


def test_detach_and_close_twice_are_safe(make_probe):
    model = make_model("tanh_mlp")
    probe = make_probe(model)
    probe.detach()  # never attached
    probe.attach()
    probe.detach()
    probe.detach()
    probe.close()
    probe.close()
    assert sum(hook_counts(model)) == 0


def test_attach_twice_is_idempotent(make_probe):
    model = make_model("tanh_mlp")
    twin = make_model("tanh_mlp")
    twin.load_state_dict(model.state_dict())
    probe = make_probe(model)
    rec = Recorder(twin, probe.layers)
    assert probe.attach() is probe
    hooks = hook_counts(model)
    assert probe.attach() is probe
    assert hook_counts(model) == hooks

    x = make_input("tanh_mlp")
    loss_fn(model(x)).backward()
    probe.step()
    loss_fn(twin(x)).backward()
    assert_matches(
        probe, expected_stats(rec, probe.layers, probe.layer_info)
    )  # nothing counted twice


def test_step_while_detached_raises(make_probe):
    model = make_model("tanh_mlp")
    probe = make_probe(model)
    with pytest.raises(ProbeConfigError, match="not attached"):
        probe.step()
    probe.attach()
    train_step(model, probe)
    probe.detach()
    with pytest.raises(ProbeConfigError, match="attach"):
        probe.step()
    probe.close()
    with pytest.raises(ProbeConfigError):
        probe.step()


def test_attach_after_close_raises(make_probe):
    probe = make_probe(make_model("tanh_mlp"))
    probe.attach()
    probe.close()
    with pytest.raises(ProbeConfigError, match="closed"):
        probe.attach()


def test_reattached_probe_goes_on_recording(make_probe):
    model = make_model("tanh_mlp")
    probe = make_probe(model)
    probe.attach()
    train_step(model, probe)
    probe.detach()
    loss_fn(model(make_input("tanh_mlp"))).backward()  # trained while detached: unseen
    model.zero_grad()
    probe.attach()
    twin = make_model("tanh_mlp")
    twin.load_state_dict(model.state_dict())
    rec = Recorder(twin, probe.layers)
    x = make_input("tanh_mlp")
    loss_fn(model(x)).backward()
    assert probe.step()
    loss_fn(twin(x)).backward()

    np.testing.assert_array_equal(probe.steps, [0, 1])
    assert_matches(probe, expected_stats(rec, probe.layers, probe.layer_info), row=1)


def test_reading_before_anything_was_recorded(make_probe):
    probe = make_probe(make_model("tanh_mlp"))
    with pytest.raises(ProbeConfigError, match="Nothing recorded"):
        probe.history("grad_norm")
    probe.attach()
    assert probe.steps.size == 0
    assert probe.history("grad_norm").shape[0] == 0


def test_unknown_statistic_is_refused_with_the_known_ones(make_probe):
    model = make_model("tanh_mlp")
    probe = make_probe(model)
    with probe:
        train_step(model, probe)
    with pytest.raises(BackprobeError, match="grad_norm"):
        probe.history("gradnorm")


def test_repr_shows_state(make_probe):
    probe = make_probe(make_model("tanh_mlp"))
    assert "detached" in repr(probe) and "layers=5" in repr(probe)
    probe.attach()
    assert "attached" in repr(probe)
    probe.close()
    assert "closed" in repr(probe)


# -- schedules -------------------------------------------------------------------------------


def test_every_three_records_steps_0_3_6(make_probe):
    model = make_model("tanh_mlp")
    probe = make_probe(model, every=3)
    with probe:
        recorded = [train_step(model, probe) for _ in range(8)]
    assert recorded == [True, False, False, True, False, False, True, False]
    np.testing.assert_array_equal(probe.steps, [0, 3, 6])
    assert probe.history("grad_norm").shape == (3, 5)
    assert np.isfinite(probe.history("loss")).all()


def test_callable_schedule(make_probe):
    model = make_model("tanh_mlp")
    seen = []

    def schedule(step: int) -> bool:
        seen.append(step)
        return step in (1, 4)

    probe = make_probe(model, every=schedule)
    with probe:
        recorded = [train_step(model, probe) for _ in range(6)]
    assert recorded == [False, True, False, False, True, False]
    np.testing.assert_array_equal(probe.steps, [1, 4])
    assert set(seen) == set(range(7))


def _every(step: int, n: int) -> bool:
    return step % n == 0


class EveryOther:
    def __call__(self, step: int) -> bool:
        return step % 2 == 0


@pytest.mark.parametrize(
    "schedule", [functools.partial(_every, n=2), EveryOther()], ids=["partial", "object"]
)
def test_nameless_schedule_with_a_run_database(schedule, tmp_path, make_probe):
    """Schedules without ``__name__`` are stored in the run's config too; the stored run
    reads back what the live probe recorded."""
    db = tmp_path / "runs.db"
    model = make_model("tanh_mlp")
    probe = make_probe(model, db=db, every=schedule)
    with probe:
        recorded = [train_step(model, probe) for _ in range(3)]
    assert recorded == [True, False, True]
    stored = bp.open_run(db, probe.run_id)
    np.testing.assert_array_equal(stored.steps, [0, 2])
    assert stored.layers == probe.layers
    for stat in ("grad_norm", "signal_norm", "act_std", "loss", "gain"):
        np.testing.assert_array_equal(stored.history(stat), probe.history(stat), err_msg=stat)


def test_rows_of_a_sparse_schedule_match_reference(make_probe):
    model = make_model("relu_mlp")
    twin = make_model("relu_mlp")
    twin.load_state_dict(model.state_dict())
    probe = make_probe(model, every=2)
    rec = Recorder(twin, probe.layers)
    expected = []
    with probe:
        for step in range(5):
            x = make_input("relu_mlp")
            loss_fn(model(x)).backward()
            probe.step()
            rec.reset()
            loss_fn(twin(x)).backward()
            if step % 2 == 0:
                expected.append(expected_stats(rec, probe.layers, probe.layer_info))
            model.zero_grad()
            twin.zero_grad()
    for row, exp in enumerate(expected):
        assert_matches(probe, exp, row=row)


def test_skipped_steps_do_no_hook_work(make_probe, monkeypatch):
    calls = {"output": 0, "grad": 0, "search": 0}
    add_output, add_grad = StepBuffer.add_output, StepBuffer.add_grad

    def counting_search(output):
        calls["search"] += 1
        return floating_tensors(output)

    def counting_output(self, *args, **kwargs):
        calls["output"] += 1
        return add_output(self, *args, **kwargs)

    def counting_grad(self, *args, **kwargs):
        calls["grad"] += 1
        return add_grad(self, *args, **kwargs)

    monkeypatch.setattr(StepBuffer, "add_output", counting_output)
    monkeypatch.setattr(StepBuffer, "add_grad", counting_grad)
    monkeypatch.setattr(probe_module, "floating_tensors", counting_search)
    model = make_model("tanh_mlp")
    outputs: list[torch.Tensor] = []
    for m in model:  # keep each output, to look for tensor hooks after the step
        m.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    probe = make_probe(model, every=3)
    per_step = []
    with probe:
        for _ in range(3):
            outputs.clear()
            train_step(model, probe)
            hooked = sum(bool(o._backward_hooks) for o in outputs)
            per_step.append((calls["output"], calls["grad"], calls["search"], hooked))
            calls.update(output=0, grad=0, search=0)
    assert per_step[0] == (5, 5, 5, 5)
    # unrecorded: only the sentinel's hook on the model's output (the last layer's)
    assert per_step[1] == per_step[2] == (0, 0, 0, 1)


def test_skipped_steps_leave_the_buffer_empty(make_probe):
    model = make_model("tanh_mlp")
    probe = make_probe(model, every=2)
    with probe:
        train_step(model, probe)
        loss_fn(model(make_input("tanh_mlp"))).backward()  # step 1: not recorded
        buffer = probe._buffer
        assert buffer.tensors == [] and not buffer.unit_max
        assert not probe.step()


def test_recorded_steps_keep_no_output_alive(make_probe):
    """After a recorded step nothing of the probe holds a layer's output, even with the
    garbage collector off (as timing code often runs): a reference cycle through a hook
    would keep every activation of every step in memory."""
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    outputs: list[weakref.ref] = []
    model[1].register_forward_hook(lambda m, i, out: outputs.append(weakref.ref(out)))
    probe = make_probe(model).attach()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(3):
            model(torch.randn(5, 4)).sum().backward()
            probe.step()
        assert len(outputs) == 3
        assert all(ref() is None for ref in outputs)
    finally:
        if enabled:
            gc.enable()
