"""Mini-batches drawn with replacement from a fixed training set, seeded, for the lab's
training loop (its ``batch(step)``), remembering the step in progress so that an
evaluation can say at which step it ran."""

from __future__ import annotations

import torch

__all__ = ["SampledBatches"]


class SampledBatches:
    """``batches(step)`` → (x [batch, …], y [batch]): row indices for every step are drawn
    up front from ``seed``'s generator (``steps`` × ``batch``); a step past the last (a
    post-mortem) reuses the last step's rows. ``step`` is the latest step asked for: the
    loop asks for the batch before it evaluates, so an evaluation reads its step here."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self._rows = torch.randint(0, len(y), (steps, batch), generator=g)
        self._x, self._y = x, y
        self.step = 0

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.step = step
        rows = self._rows[min(step, len(self._rows) - 1)]
        return self._x[rows], self._y[rows]
