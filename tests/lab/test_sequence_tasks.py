"""The lab's tasks, each against its definition: layout, baselines, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backprobe.lab.tasks import (
    adding_task,
    copy_task,
    insurance_task,
    latch_task,
    mackey_glass,
    temporal_order_task,
)


def test_adding_layout_and_mean_baseline() -> None:
    task = adding_task(20000, 50, seed=0)
    assert task.x.shape == (20000, 50, 2) and task.y.shape == (20000, 1)
    marks = task.x[..., 1]
    assert torch.all(marks.sum(1) == 2)
    assert torch.all(marks[:, :25].sum(1) == 1) and torch.all(marks[:, 25:].sum(1) == 1)
    assert torch.allclose((task.x[..., 0] * marks).sum(1, keepdim=True), task.y)
    # Predicting the mean: MSE = Var(U + U') = 1/6, measured.
    assert task.baseline == pytest.approx(1 / 6)
    assert float(((task.y - 1.0) ** 2).mean()) == pytest.approx(1 / 6, rel=0.03)


def test_copy_layout_and_memoryless_baseline() -> None:
    task = copy_task(5000, 100, seed=0)
    assert task.x.shape == task.y.shape == (5000, 120) and task.per_step and task.tokens
    assert torch.equal(task.y[:, -10:], task.x[:, :10])
    assert torch.all(task.x[:, 109] == 9) and torch.all(task.y[:, :110] == 0)
    assert int(task.x[:, :10].min()) >= 1 and int(task.x[:, :10].max()) <= 8
    assert task.baseline == pytest.approx(10 * math.log(8) / 120) and 0.172 < task.baseline < 0.174
    # The memoryless predictor: blank, then uniform over the 8 symbols, scores the baseline.
    logits = torch.full((5000, 120, 9), -1e9)
    logits[:, :110, 0] = 0.0
    logits[:, 110:, 1:] = 0.0
    loss = F.cross_entropy(logits.reshape(-1, 9), task.y.reshape(-1))
    assert float(loss) == pytest.approx(task.baseline, rel=1e-4)


@pytest.mark.parametrize("symbols", [2, 3])
def test_temporal_order_windows_and_classes(symbols: int) -> None:
    length = 60
    task = temporal_order_task(8000, length, symbols=symbols, seed=1)
    info = task.x < 2
    assert torch.all(info.sum(1) == symbols)
    windows = {2: [(6, 12), (30, 36)], 3: [(6, 12), (18, 24), (36, 42)]}[symbols]
    pos = torch.nonzero(info)[:, 1].reshape(-1, symbols)
    for k, (lo, hi) in enumerate(windows):
        assert int(pos[:, k].min()) == lo and int(pos[:, k].max()) == hi - 1
    bits = task.x[info].reshape(-1, symbols)
    assert torch.equal(task.y, (bits * 2 ** torch.arange(symbols - 1, -1, -1)).sum(1))
    counts = torch.bincount(task.y, minlength=2**symbols).double()
    assert float(counts.min() / counts.max()) > 0.85
    assert task.baseline == pytest.approx(math.log(2**symbols))
    assert task.chance == pytest.approx(2.0**-symbols)


def test_latch_information_only_at_the_start() -> None:
    task = latch_task(4000, 30, info=3, noise=0.2, seed=0)
    assert task.x.shape == (4000, 30, 1) and abs(float(task.y.float().mean()) - 0.5) < 1e-3
    sign = 2.0 * task.y.float() - 1.0
    head = task.x[:, :3, 0].mean(1)
    assert float((head * sign).min()) > 0  # noise 0.2 never flips a 3-step mean of ±1
    tail = task.x[:, 3:, 0]
    assert abs(float(torch.corrcoef(torch.stack([tail.mean(1), sign]))[0, 1])) < 0.05
    assert float(tail.std()) == pytest.approx(0.2, rel=0.02)


def test_insurance_factors_and_ceiling() -> None:
    task = insurance_task(20000, 20000, seed=0)
    assert task.x_train.shape == (20000, 4) and task.n_classes == 2
    # Labels follow affordability four times as strongly as awareness.
    y = task.y_test.float()
    c_aff = float(torch.corrcoef(torch.stack([task.affordability_test, y]))[0, 1])
    c_awa = float(torch.corrcoef(torch.stack([task.awareness_test, y]))[0, 1])
    assert c_aff > 2 * c_awa > 0
    # Awareness is a function of (age, education) only, affordability of (income, savings).
    assert torch.allclose(
        task.awareness_test, torch.tanh(task.x_test[:, :2] @ torch.tensor([0.8, 0.6])), atol=1e-5
    )
    assert torch.allclose(
        task.affordability_test,
        torch.tanh(task.x_test[:, 2:] @ torch.tensor([0.7, 0.7])),
        atol=1e-5,
    )
    # The true rule's accuracy on the drawn labels matches the stated ceiling.
    p = torch.sigmoid(8 * (0.2 * task.awareness_test + 0.8 * task.affordability_test))
    assert float(((p > 0.5).long() == task.y_test).float().mean()) == pytest.approx(
        task.bayes, abs=0.01
    )
    assert 0.85 < task.bayes < 0.95 and 0.5 <= task.chance < 0.55
    assert float(task.raw_test[:, 0].min()) >= 18 and float(task.raw_test[:, 0].max()) <= 70


def test_mackey_glass_against_a_fine_euler_integration() -> None:
    """RK4 at step 1 agrees with Euler at step 0.001 (same history) over 60 time units."""
    series = mackey_glass(61, seed=0).numpy()
    g = torch.Generator().manual_seed(0)
    history = 1.2 + 0.2 * (torch.rand(17, generator=g, dtype=torch.float64) - 0.5)
    h, sub = 1e-3, 1000
    # Delayed values between the coarse history points: linear interpolation, as RK4 uses.
    coarse = np.concatenate([history.numpy(), [1.2]])
    fine = list(np.interp(np.arange(17 * sub + 1) / sub, np.arange(18), coarse))
    for _ in range(60 * sub):
        x, d = fine[-1], fine[-1 - 17 * sub]
        fine.append(x + h * (0.2 * d / (1 + d**10) - 0.1 * x))
    euler = np.array(fine[17 * sub :: sub])
    assert np.max(np.abs(series - euler)) < 2e-3
    long = mackey_glass(3000, seed=0)
    assert 0.3 < float(long.min()) < 0.5 and 1.2 < float(long.max()) < 1.4


@pytest.mark.parametrize(
    "make",
    [
        lambda s: adding_task(8, 10, seed=s),
        lambda s: copy_task(8, 5, seed=s),
        lambda s: temporal_order_task(8, 20, seed=s),
        lambda s: latch_task(8, 10, seed=s),
    ],
)
def test_sequence_tasks_are_seeded(make) -> None:  # type: ignore[no-untyped-def]
    a, b, c = make(0), make(0), make(1)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    state = torch.get_rng_state()
    make(3)
    assert torch.equal(state, torch.get_rng_state())


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="length"):
        adding_task(4, 1)
    with pytest.raises(ValueError, match="symbols"):
        temporal_order_task(4, 50, symbols=4)
    with pytest.raises(ValueError, match="info"):
        latch_task(4, 3, info=3)
    with pytest.raises(ValueError, match="delay"):
        copy_task(4, 0)
