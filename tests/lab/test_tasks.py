"""The synthetic classification task: shapes, determinism, balance, a learnable teacher."""

from __future__ import annotations

import pytest
import torch

from backprobe.lab.tasks import classification_task


def test_shapes_and_dtypes() -> None:
    task = classification_task(n_train=300, n_test=100, n_features=5, n_classes=3, seed=0)
    assert task.x_train.shape == (300, 5) and task.x_train.dtype == torch.float32
    assert task.y_train.shape == (300,) and task.y_train.dtype == torch.int64
    assert task.x_test.shape == (100, 5) and task.y_test.shape == (100,)
    assert task.n_features == 5 and task.n_classes == 3
    assert task.chance == pytest.approx(1 / 3)
    assert int(task.y_train.min()) == 0 and int(task.y_train.max()) == 2


def test_seeded_determinism() -> None:
    a = classification_task(n_train=256, n_test=64, seed=7)
    b = classification_task(n_train=256, n_test=64, seed=7)
    c = classification_task(n_train=256, n_test=64, seed=8)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.x_train, c.x_train)
    assert not torch.equal(a.y_train, c.y_train)


def test_global_rng_untouched() -> None:
    state = torch.get_rng_state()
    classification_task(n_train=64, n_test=32, seed=1)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize(("n_classes", "seed"), [(2, 0), (4, 0), (4, 1), (4, 2), (10, 3)])
def test_classes_are_balanced(n_classes: int, seed: int) -> None:
    task = classification_task(
        n_train=2048, n_test=1024, n_features=8, n_classes=n_classes, seed=seed, teacher_width=16
    )
    for y, n in ((task.y_train, 2048), (task.y_test, 1024)):
        counts = torch.bincount(y, minlength=n_classes)
        assert int(counts.sum()) == n
        assert int(counts.max() - counts.min()) <= 2


def test_train_and_test_are_disjoint() -> None:
    task = classification_task(n_train=512, n_test=256, seed=0)
    both = torch.cat([task.x_train, task.x_test])
    assert torch.unique(both, dim=0).shape[0] == both.shape[0]


def test_labels_follow_the_inputs_nonlinearly() -> None:
    """Labels are a function of x that a linear model gets partly right and a small MLP
    gets mostly right: not noise, not linearly separable."""
    torch.manual_seed(0)
    task = classification_task(n_train=2048, n_test=1024, n_features=8, seed=0, teacher_width=8)

    def fit(model: torch.nn.Module, steps: int = 400) -> float:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(task.x_train), task.y_train)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float((model(task.x_test).argmax(1) == task.y_test).float().mean())

    linear = fit(torch.nn.Linear(8, 4))
    mlp = fit(torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)))
    assert 0.4 < linear < mlp
    assert mlp > 0.85


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="n_classes"):
        classification_task(n_classes=1)
    with pytest.raises(ValueError, match="positive"):
        classification_task(n_train=0)
    # One feature through one tanh unit: the fitted offsets do not share the pool out over ten
    # classes (some class wins no input at all, for every seed and CPU kernel tried).
    with pytest.raises(ValueError, match="more features"):
        classification_task(n_features=1, teacher_width=1, n_classes=10, seed=0)
