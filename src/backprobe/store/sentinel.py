"""The sentinel's stored rows: a few numbers of every training step, whatever the schedule,
and the events that acted on the run (a :class:`~backprobe.Guard`'s skipped steps).

The probe's schedule records the full per-layer statistics at some steps; the sentinel
(:mod:`~backprobe.probe.sentinel`) keeps, at *every* ``step()``, what a spike needs to be
placed: the loss, the global gradient norm, each layer's gradient norm and the samples
carrying the gradient at the model's output. One float32 row per step, laid out as

    [SENTINEL_FIELDS…, top sample indices (TOP_SAMPLES), their norms (TOP_SAMPLES),
     one gradient norm per sentinel layer]

in the run database's ``sentinel`` table (its own step index: every step, not only the
recorded ones). The sentinel layers are the probed layers owning parameters, in
registration order; their names are stored with the run's probe options
(``probe_config["sentinel_layers"]``), so the rows need no recorded step to be read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: The values at the head of every sentinel row, in order.
SENTINEL_FIELDS: tuple[str, ...] = (
    "loss",  # the loss given to step(), NaN if none
    "grad_norm",  # global L2 norm of the probed trainable parameters' gradients
    "gradients",  # how many of those parameters had a gradient (0: step() before backward)
    "scale",  # the GradScaler's scale (NaN without one); the norms are unscaled
    "out_grad_norm",  # ||dL/d output|| over the step's samples (every forward of the step)
    "out_grad_median",  # median over the samples of their ||dL/d output||
    "samples",  # how many samples the output gradient had (rows of the output's dim 0)
)
#: Samples with the largest output-gradient norms kept per step (index and norm).
TOP_SAMPLES = 8
#: The run config key naming the sentinel's layers (under ``"probe"``).
LAYERS_KEY = "sentinel_layers"


def row_width(n_layers: int) -> int:
    """Values per stored row for ``n_layers`` sentinel layers."""
    return len(SENTINEL_FIELDS) + 2 * TOP_SAMPLES + n_layers


def pack_row(
    fields: dict[str, float],
    top_index: np.ndarray,
    top_norm: np.ndarray,
    layer_norms: np.ndarray,
) -> np.ndarray:
    """One stored row (float32): ``fields`` by name (missing ones NaN), up to
    :data:`TOP_SAMPLES` sample indices (padded with -1) and norms (padded with NaN), and
    the layers' gradient norms."""
    k = min(TOP_SAMPLES, top_index.size)
    index = np.full(TOP_SAMPLES, -1.0)
    norm = np.full(TOP_SAMPLES, np.nan)
    index[:k], norm[:k] = top_index[:k], top_norm[:k]
    head = [fields.get(name, np.nan) for name in SENTINEL_FIELDS]
    with np.errstate(over="ignore"):  # beyond float32's range is stored as inf
        return np.concatenate([head, index, norm, layer_norms]).astype(np.float32)


@dataclass(frozen=True)
class SentinelSeries:
    """Every step's sentinel values of a run, float64 (stored as float32).

    ``steps`` int64 [N]; each of :data:`SENTINEL_FIELDS` [N] (``history``-like access:
    ``series.field("loss")``); ``top_samples`` int64 [N, TOP_SAMPLES], the indices of the
    samples with the largest output-gradient norms, largest first (-1 past the batch) and
    ``top_norms`` [N, TOP_SAMPLES] their norms; ``layer_grad_norm`` [N, layers] the
    gradient norm of each of ``layers`` (NaN where no parameter of it had a gradient).
    """

    steps: np.ndarray
    values: np.ndarray  # [N, len(SENTINEL_FIELDS)]
    top_samples: np.ndarray
    top_norms: np.ndarray
    layer_grad_norm: np.ndarray
    layers: tuple[str, ...] = field(default=())

    @classmethod
    def from_rows(
        cls, steps: np.ndarray, rows: np.ndarray, layers: tuple[str, ...]
    ) -> SentinelSeries:
        """The series from stored rows [N, row_width] (any float dtype), ``steps`` [N]."""
        rows = np.asarray(rows, dtype=np.float64)
        n = len(SENTINEL_FIELDS)
        width = rows.shape[1] - n - 2 * TOP_SAMPLES
        if width != len(layers):  # names lost (an older run's config): numbered
            layers = tuple(str(i) for i in range(max(width, 0)))
        top = rows[:, n : n + TOP_SAMPLES]
        return cls(
            steps=np.asarray(steps, dtype=np.int64),
            values=rows[:, :n],
            top_samples=np.where(np.isfinite(top), top, -1).astype(np.int64),
            top_norms=rows[:, n + TOP_SAMPLES : n + 2 * TOP_SAMPLES],
            layer_grad_norm=rows[:, n + 2 * TOP_SAMPLES :],
            layers=tuple(layers),
        )

    @classmethod
    def empty(cls, layers: tuple[str, ...] = ()) -> SentinelSeries:
        """A run without sentinel rows (recorded before the sentinel existed)."""
        return cls.from_rows(np.zeros(0, np.int64), np.zeros((0, row_width(len(layers)))), layers)

    def __len__(self) -> int:
        return int(self.steps.size)

    def field(self, name: str) -> np.ndarray:
        """One of :data:`SENTINEL_FIELDS` over the steps, float64 [N]."""
        return self.values[:, SENTINEL_FIELDS.index(name)]

    def until(self, step: int) -> SentinelSeries:
        """The rows of steps up to ``step`` (included)."""
        keep = self.steps <= step
        return SentinelSeries(
            self.steps[keep],
            self.values[keep],
            self.top_samples[keep],
            self.top_norms[keep],
            self.layer_grad_norm[keep],
            self.layers,
        )


@dataclass(frozen=True)
class RunEvent:
    """Something that acted on the training at ``step``: ``kind`` (a guard's ``"skip"``,
    ``"clip"``, ``"scale_lr"``, ``"restore_lr"``) and its ``detail`` (JSON values: the
    reason, the numbers it acted on)."""

    step: int
    kind: str
    detail: dict = field(default_factory=dict)
