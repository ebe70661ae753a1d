"""The read API shared by a live :class:`~backprobe.Probe` and a stored run.

Both hold, per recorded step, the stored series below; the derived statistics are
computed here from them so that nothing is stored twice.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackprobeError

#: Per-layer series stored for each recorded step, each [layers].
LAYER_SERIES: tuple[str, ...] = (
    "grad_norm",  # ||dL/dθ|| over the layer's own trainable parameters
    "weight_norm",  # ||θ|| over the same parameters
    "signal_norm",  # ||dL/d output||: the backward signal reaching the layer's output
    "act_mean",  # mean of the layer's primary output
    "act_std",  # standard deviation of the primary output
    "saturated",  # fraction of saturated units (sigmoid / tanh / hard-tanh family)
    "dead",  # fraction of units zero for the whole batch (ReLU family)
    "nonfinite_out",  # samples whose output holds a NaN or an infinity
    "nonfinite_grad",  # samples whose dL/d output holds a NaN or an infinity
)
#: Run-level series stored for each recorded step.
STEP_SERIES: tuple[str, ...] = (
    "loss",  # [1] the loss passed to step(), NaN if none
    "first_nonfinite",  # [2] (layer index, phase 0 forward / 1 backward), -1 if none
)
#: Statistics computed from the stored ones.
DERIVED_SERIES: tuple[str, ...] = ("grad_to_weight", "gain", "nonfinite")
ALL_SERIES: tuple[str, ...] = LAYER_SERIES + DERIVED_SERIES + STEP_SERIES


def series_width(stat: str, n_layers: int) -> int:
    """Values per step of a stored series."""
    if stat in LAYER_SERIES:
        return n_layers
    return 2 if stat == "first_nonfinite" else 1


@dataclass(frozen=True)
class LayerInfo:
    """One probed layer. ``index`` is its position in input → output order."""

    index: int
    name: str
    type: str
    family: str  # activation family ("sigmoid", "relu", …) or "" for other layers
    n_params: int  # trainable parameters owned by the layer
    frozen: bool  # owns parameters, none of them trainable


class RunView(ABC):
    """Read access to one run: layer names, recorded steps and statistic histories."""

    @property
    @abstractmethod
    def layer_info(self) -> list[LayerInfo]:
        """The probed layers, input → output order."""

    @property
    @abstractmethod
    def steps(self) -> np.ndarray:
        """Recorded step indices, int64 [S]."""

    @abstractmethod
    def _stored(self, stat: str) -> np.ndarray:
        """A stored series as float64 [S, width]."""

    @property
    def layers(self) -> list[str]:
        """Probed layer names, input → output order."""
        return [layer.name for layer in self.layer_info]

    def history(self, stat: str) -> np.ndarray:
        """A statistic over the recorded steps.

        Per-layer statistics are float64 [S, layers] (NaN where they do not apply);
        ``"loss"`` is [S]; ``"first_nonfinite"`` is [S, 2] (layer index, phase).
        ``"gain"`` is ||dL/d a_{l-1}|| / ||dL/d a_l||: how much the backward signal grows
        (> 1) or shrinks (< 1) on its way back through layer l; NaN for the first layer.
        """
        if stat not in ALL_SERIES:
            raise BackprobeError(
                f"Unknown statistic {stat!r}. Expected one of: {', '.join(ALL_SERIES)}."
            )
        with np.errstate(invalid="ignore", divide="ignore"):
            if stat == "grad_to_weight":
                return self._stored("grad_norm") / self._stored("weight_norm")
            if stat == "gain":
                signal = self._stored("signal_norm")
                gain = np.full_like(signal, np.nan)
                gain[:, 1:] = signal[:, :-1] / signal[:, 1:]
                return gain
        if stat == "nonfinite":
            out, grad = self._stored("nonfinite_out"), self._stored("nonfinite_grad")
            total = np.nansum(np.stack([out, grad]), axis=0)
            return np.where(np.isnan(out) & np.isnan(grad), np.nan, total)
        if stat == "loss":
            return self._stored("loss")[:, 0]
        return self._stored(stat)

    def layer_index(self, layer: str | int) -> int:
        """Index of a layer given by name or index; raises a clear error if unknown."""
        names = self.layers
        if isinstance(layer, int) and not isinstance(layer, bool):
            if -len(names) <= layer < len(names):
                return layer % len(names)
        elif layer in names:
            return names.index(layer)
        raise BackprobeError(
            f"No probed layer {layer!r}. Expected a name or an index below {len(names)}; "
            f"layers: {', '.join(names[:6])}{' …' if len(names) > 6 else ''}."
        )

    def step_index(self, step: int | None) -> int:
        """Row of a recorded step (the last one when ``step`` is None)."""
        steps = self.steps
        if steps.size == 0:
            raise BackprobeError("This run has no recorded step yet.")
        if step is None:
            return steps.size - 1
        hits = np.flatnonzero(steps == step)
        if not hits.size:
            raise BackprobeError(
                f"Step {step} was not recorded. Expected one of the recorded steps "
                f"{int(steps[0])}…{int(steps[-1])} ({steps.size} in all), e.g. "
                f"{', '.join(str(int(s)) for s in steps[-3:])}."
            )
        return int(hits[0])

    def report(self, path: str | os.PathLike = "report.html", **options: Any) -> Path:
        """Write the self-contained HTML report of this run (verdict, findings, per-layer
        table, figures) to ``path``; returns the path. ``options`` as for
        :func:`backprobe.report.html.render_report`."""
        from ..report.html import write_report

        return write_report(self, path, **options)

    def _repr_html_(self) -> str:
        """The report as a notebook cell shows it: verdict, findings, table, two figures."""
        from ..report.html import NOTEBOOK_FIGURES, render_report

        return render_report(self, fragment=True, include=NOTEBOOK_FIGURES)


class MemoryRun(RunView):
    """A run kept in memory only (``Probe(db=None)``); also the probe's sink."""

    def __init__(self) -> None:
        self._layers: list[LayerInfo] = []
        self._steps: list[int] = []
        self._series: dict[str, list[np.ndarray]] = {s: [] for s in LAYER_SERIES + STEP_SERIES}

    @property
    def layer_info(self) -> list[LayerInfo]:
        return list(self._layers)

    @property
    def steps(self) -> np.ndarray:
        return np.asarray(self._steps, dtype=np.int64)

    def _stored(self, stat: str) -> np.ndarray:
        rows = self._series[stat]
        if not rows:
            return np.zeros((0, series_width(stat, len(self._layers))))
        return np.stack(rows).astype(np.float64)

    def set_layers(self, layers: list[LayerInfo]) -> None:
        self._layers = list(layers)

    def append(self, step: int, series: dict[str, np.ndarray]) -> None:
        self._steps.append(step)
        for stat, values in series.items():
            with np.errstate(over="ignore"):  # beyond float32's range is stored as inf
                self._series[stat].append(np.asarray(values, dtype=np.float32))

    def flush(self) -> None:
        """Nothing to write: kept for the sink interface."""

    def close(self, status: str, error: str | None = None) -> None:
        """Nothing to release: kept for the sink interface."""

    def view(self) -> RunView:
        return self
