"""The Shapeset-like images: seeded, in range, labelled by the shapes they hold."""

from __future__ import annotations

import pytest
import torch

from backprobe.errors import LabConfigError
from backprobe.lab.shapeset import SHAPESET_CLASSES, shapeset_images, shapeset_task


def test_images_are_a_pure_function_of_the_seed() -> None:
    x, y = shapeset_images(64, 12, seed=3)
    x2, y2 = shapeset_images(64, 12, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, shapeset_images(64, 12, seed=4)[0])
    assert x.shape == (64, 144) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_classes_follow_the_number_and_kinds_of_shapes() -> None:
    x, y = shapeset_images(3000, 16, seed=0)
    share = torch.bincount(y, minlength=9).float() / len(y)
    assert len(SHAPESET_CLASSES) == 9
    # One shape (half the images, a third each), a pair of different shapes (1/9 each),
    # a pair of equal shapes (1/18 each).
    # Classes 3-8 are the pairs (0,0) (0,1) (0,2) (1,1) (1,2) (2,2).
    expected = torch.tensor([1 / 6] * 3 + [1 / 18, 1 / 9, 1 / 9, 1 / 18, 1 / 9, 1 / 18])
    assert torch.allclose(share, expected, atol=0.025)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # Every image shows an object: some pixels brighter than its background.
    assert bool((x.max(1).values > x.min(1).values).all())


def test_task_splits_one_draw_and_names_its_majority_chance() -> None:
    task = shapeset_task(100, 20, 8, seed=1)
    x, y = shapeset_images(120, 8, seed=1)
    assert torch.equal(task.x_test, x[100:]) and torch.equal(task.y_train, y[:100])
    assert task.n_features == 64 and task.n_classes == 9
    assert task.chance == pytest.approx(1 / 6)


def test_bad_sizes_are_user_errors() -> None:
    with pytest.raises(LabConfigError, match="size >= 4"):
        shapeset_images(10, 2)
