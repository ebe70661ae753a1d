"""The seeds' autocomplete sentences: layout, balance, determinism, the only clue."""

from __future__ import annotations

import pytest
import torch

from backprobe.lab.tasks import autocomplete_task


def test_shapes_vocab_and_layout() -> None:
    task = autocomplete_task(10, 7, seed=0)
    assert task.x.shape == (10, 10) and task.x.dtype == torch.int64
    assert task.y.shape == (10,) and task.y.dtype == torch.int64
    assert task.length == 10 and task.n_classes == 2 and task.chance == 0.5
    assert int(task.x.max()) < task.vocab_size
    assert all(task.vocab[int(t)] == "i" for t in task.x[:, -1])
    for i in range(10):
        words = task.sentence(i).split()
        assert words[-1] == ("need" if int(task.y[i]) == 0 else "had")


def test_first_words_decide_the_verb() -> None:
    """The marker maps to the class (present → need, past → had) and nothing after it
    does: the filler words are distributed alike in both classes."""
    task = autocomplete_task(4000, 12, seed=3)
    present = {"today", "right", "this", "these"}
    past = {"last", "back", "yesterday"}
    first = [task.vocab[int(t)] for t in task.x[:, 0]]
    assert all((w in present) == (int(c) == 0) for w, c in zip(first, task.y, strict=True))
    assert all((w in past) == (int(c) == 1) for w, c in zip(first, task.y, strict=True))
    body = task.x[:, 2:-1]
    hist = [torch.bincount(body[task.y == c].flatten(), minlength=task.vocab_size) for c in (0, 1)]
    p0, p1 = (h.double() / h.sum() for h in hist)
    assert float((p0 - p1).abs().max()) < 0.01
    marker_words = {task.x[i, j].item() for i in range(4000) for j in (0, 1)}
    assert not marker_words & set(body.unique().tolist()) - {task.vocab.index(",")}


def test_balanced_and_seeded() -> None:
    a, b, c = (autocomplete_task(101, 5, seed=s) for s in (1, 1, 2))
    assert abs(int(a.y.sum()) - 50) <= 1
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    state = torch.get_rng_state()
    autocomplete_task(8, 3, seed=0)
    assert torch.equal(state, torch.get_rng_state())


def test_zero_filler_and_bad_arguments() -> None:
    assert autocomplete_task(4, 0).x.shape == (4, 3)
    with pytest.raises(ValueError, match="filler"):
        autocomplete_task(4, -1)
    with pytest.raises(ValueError, match="n >= 1"):
        autocomplete_task(0, 3)
