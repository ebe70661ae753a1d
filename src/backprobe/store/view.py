"""The read API shared by a live :class:`~backprobe.Probe` and a stored run.

Both hold, per recorded step, the stored series below (the per-layer ones are listed in
:mod:`~backprobe.store.statistics`); the derived statistics are computed here from them so
that nothing is stored twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import BackprobeError
from .sentinel import RunEvent, SentinelSeries
from .statistics import LAYER_SERIES

#: Run-level series stored for each recorded step.
STEP_SERIES: tuple[str, ...] = (
    "loss",  # [1] the loss passed to step(), NaN if none
    "first_nonfinite",  # [2] (layer index, phase 0 forward / 1 backward), -1 if none
    # [1] probed trainable parameters that had a gradient at step(): 0 when step() came
    # before loss.backward() (NaN in runs recorded before it was stored)
    "gradients",
    # [1] the probe's measured overhead up to this step (at the last recorded step: up to
    # the run's end): time recording added, as a fraction of the training time without it
    # (NaN before it was measured or stored)
    "overhead",
    # [1] the sentinel's measured overhead (its time at every step, recorded or not) as a
    # fraction of the training time without the probe, on top of "overhead"
    "sentinel_overhead",
    # [1] the model output's largest |value| and root-mean-square (its logits for a
    # classifier or language model; see probe.attention), NaN if it gave no tensor
    "output_max",
    "output_rms",
)
#: Statistics computed from the stored ones.
DERIVED_SERIES: tuple[str, ...] = ("grad_to_weight", "gain", "nonfinite")
ALL_SERIES: tuple[str, ...] = LAYER_SERIES + DERIVED_SERIES + STEP_SERIES
#: Stored name of a user scalar (``Probe.record_scalar``): kept apart from ours.
USER_PREFIX = "user:"
#: Per recorded step and recurrent (sub-)layer: float32 rows of varying length.
PROFILE_KINDS: tuple[str, ...] = (
    "signal",  # [T] ||dL/dh_t|| for t = 0…T−1, summed over the probed sub-batch
    "decay",  # [T] ||dh_T/dh_(T−lag)||₂ (LSTM: of c) for lag = 0…T−1, processing order
    "theory",  # [2] λ1 of W_hh and γ = max |σ'| (NaN for gated cells)
)
#: Default memory-horizon threshold: the lag where ||dh_T/dh_(T−lag)|| falls below it.
HORIZON_THRESHOLD = 1e-3

#: Rows stored at some of the recorded steps: (steps int64 [R], one array per row).
SparseRows = tuple[np.ndarray, list[np.ndarray]]
#: One recorded step's series by stored name: per-layer ones [layers] in input → output
#: order, run-level ones (``loss`` [1], ``first_nonfinite`` [2]) and user scalars [1]
#: (under :data:`USER_PREFIX`).
StepSeries = Mapping[str, np.ndarray]
#: One recorded step's time profiles by (recurrent sub-layer name, kind of
#: :data:`PROFILE_KINDS`), each 1-D.
StepProfiles = Mapping[tuple[str, str], np.ndarray]


def align_rows(steps: np.ndarray, sparse: SparseRows) -> np.ndarray:
    """Sparse rows laid out as float64 [len(steps), longest row], NaN where absent."""
    row_steps, rows = sparse
    width = max((r.size for r in rows), default=0)
    out = np.full((steps.size, width), np.nan)
    where = {int(s): i for i, s in enumerate(steps)}
    for step, row in zip(row_steps, rows, strict=True):
        if int(step) in where:
            out[where[int(step)], : row.size] = row
    return out


def series_width(stat: str, n_layers: int) -> int:
    """Values per step of a stored series."""
    if stat in LAYER_SERIES:
        return n_layers
    return 2 if stat == "first_nonfinite" else 1


#: What a probed layer's statistics describe (see :class:`LayerInfo`).
LayerRole = Literal["layer", "params", "block"]


@dataclass(frozen=True)
class LayerInfo:
    """One probed layer. ``index`` is its position in input → output order: the order in
    which the backward pass of the first recorded step reached the layers, reversed.

    ``role`` says what is measured: ``"layer"``, a module measured by its output (and
    its own parameters); ``"params"``, parameters used outside a call of their owner
    (a root module's ``cls_token``, ``nn.MultiheadAttention.out_proj``'s weights):
    parameter statistics only; ``"block"``, a residual block: the residual stream at its
    output (backward signal, activation statistics), no parameter statistics.
    """

    index: int
    name: str
    type: str
    family: str  # activation family ("sigmoid", "relu", …) or "" for other layers
    n_params: int  # trainable parameters owned by the layer
    frozen: bool  # owns parameters, none of them trainable
    role: LayerRole = "layer"
    ran: bool = True  # ran (for "params": got a gradient) at the first recorded step
    shared_with: str = ""  # another layer holding one of its parameters (tied), or ""
    block: str = ""  # the residual block this layer is part of, or ""


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

    @abstractmethod
    def _user_rows(self, stat: str) -> SparseRows:
        """A user scalar's rows (stored name with :data:`USER_PREFIX`)."""

    @property
    def probe_config(self) -> dict:
        """The probe options the run was recorded with (its schedule as ``every``, how
        the statistics were measured as ``measured``); empty when unknown."""
        return {}

    @abstractmethod
    def _profile_rows(self, name: str, kind: str) -> SparseRows:
        """A recurrent (sub-)layer's time-profile rows of one kind."""

    @property
    @abstractmethod
    def scalar_names(self) -> list[str]:
        """Names of the scalars recorded with ``Probe.record_scalar``, sorted."""

    @property
    @abstractmethod
    def recurrent_layers(self) -> list[str]:
        """Recurrent (sub-)layers with time profiles: the module's name for a one-layer,
        one-direction module or a cell; ``"name[l1]"``, ``"name[l0_reverse]"`` (PyTorch's
        parameter suffixes) for each layer and direction of a stacked or bidirectional one.
        """

    @property
    def run_id(self) -> int | None:
        """Id of the run in its run database; None for a run kept in memory only."""
        return None

    @property
    def sentinel(self) -> SentinelSeries:
        """The sentinel's values of every step, recorded or not (see
        :mod:`~backprobe.store.sentinel`); empty for a run recorded without them."""
        return SentinelSeries.empty()

    @property
    def events(self) -> list[RunEvent]:
        """What acted on the training (a Guard's skipped steps…), in order; empty when
        nothing did."""
        return []

    @property
    def layers(self) -> list[str]:
        """Probed layer names, input → output order."""
        return [layer.name for layer in self.layer_info]

    def history(self, stat: str) -> np.ndarray:
        """A statistic over the recorded steps.

        Per-layer statistics are float64 [S, layers] (NaN where they do not apply);
        ``"loss"`` and scalars recorded with ``Probe.record_scalar`` are [S] (NaN at steps
        without one); ``"first_nonfinite"`` is [S, 2] (layer index, phase).
        ``"gain"`` is ||dL/d a_{l-1}|| / ||dL/d a_l||: how much the backward signal grows
        (> 1) or shrinks (< 1) on its way back through layer l; NaN for the first layer.
        In a model with residual blocks (``role="block"``) the chain is that of the layers
        outside every block: a block's gain is that of the residual stream from the entry
        before it (the previous block) to its output, and layers inside a block's residual
        branch get NaN (their signals do not form a chain). Layers measured by their
        parameters only (``role="params"``) have no signal: NaN, skipped by the chain.
        """
        if stat not in ALL_SERIES:
            if stat in self.scalar_names:
                return align_rows(self.steps, self._user_rows(USER_PREFIX + stat))[:, 0]
            known = ", ".join((*ALL_SERIES, *self.scalar_names))
            raise BackprobeError(f"Unknown statistic {stat!r}. Expected one of: {known}.")
        with np.errstate(invalid="ignore", divide="ignore"):
            if stat == "grad_to_weight":
                return self._stored("grad_norm") / self._stored("weight_norm")
            if stat == "gain":
                return self._gain()
        if stat == "nonfinite":
            out, grad = self._stored("nonfinite_out"), self._stored("nonfinite_grad")
            total = np.nansum(np.stack([out, grad]), axis=0)
            return np.where(np.isnan(out) & np.isnan(grad), np.nan, total)
        if stat == "loss":
            return self._stored("loss")[:, 0]
        return self._stored(stat)

    def _gain(self) -> np.ndarray:
        """float64 [S, layers]: see :meth:`history` ("gain"); call it with numpy's
        invalid-value and divide warnings off."""
        signal = self._stored("signal_norm")
        gain = np.full_like(signal, np.nan)
        chain = [
            layer.index
            for layer in self.layer_info
            if not layer.block and layer.role != "params"  # parameters have no signal
        ]
        if len(chain) == signal.shape[1]:  # no blocks: every layer
            gain[:, 1:] = signal[:, :-1] / signal[:, 1:]
        elif len(chain) > 1:
            gain[:, chain[1:]] = signal[:, chain[:-1]] / signal[:, chain[1:]]
        return gain

    def _in_layer_order(self, names: Iterable[str]) -> list[str]:
        """Recurrent sub-layer names ordered like their modules in :attr:`layers`."""
        position = {layer: i for i, layer in enumerate(self.layers)}
        return sorted(set(names), key=lambda n: (position.get(n.split("[")[0], -1), n))

    def recurrent_layer(self, name: str) -> str:
        """The stored name of a recurrent (sub-)layer; raises a clear error if unknown."""
        names = self.recurrent_layers
        if name in names:
            return name
        subs = [n for n in names if n.startswith(name + "[")]
        hint = (
            f"{name!r} has one profile per layer and direction: pass one of {', '.join(subs)}."
            if subs
            else f"Expected one of: {', '.join(names) or 'none (no recurrent layer probed)'}."
        )
        raise BackprobeError(f"No time profile for {name!r}. {hint}")

    def time_profile(self, name: str) -> np.ndarray:
        """||dL/dh_t|| of a recurrent (sub-)layer: float64 [S, T] over the recorded steps
        and time steps t = 0…T−1 (NaN at steps without a profile, or past a shorter
        sequence's end). The full BPTT gradient at h_t, through later steps included,
        over the probed sub-batch."""
        return align_rows(self.steps, self._profile_rows(self.recurrent_layer(name), "signal"))

    def jacobian_decay(self, name: str) -> np.ndarray:
        """||dh_T/dh_(T−lag)||₂ for lag = 0…T−1: float64 [S, T] (1 at lag 0). How much of
        a perturbation of the state ``lag`` steps before the end still reaches the end
        (Pascanu 2013, eq. 5); in processing order, so for a reverse direction "the end"
        is t = 0. For an LSTM it is the cell state's ||dc_T/dc_(T−lag)||: its memory."""
        return align_rows(self.steps, self._profile_rows(self.recurrent_layer(name), "decay"))

    def memory_horizon(self, name: str, threshold: float = HORIZON_THRESHOLD) -> np.ndarray:
        """Per recorded step, the first lag where :meth:`jacobian_decay` falls below
        ``threshold`` × its value at lag 0: float64 [S]; inf when it never does within the
        sequence, NaN at steps without a profile."""
        decay = self.jacobian_decay(name)
        horizon = np.full(decay.shape[0], np.nan)
        for row, values in enumerate(decay):
            if values.size and not np.isnan(values[0]):
                below = np.flatnonzero(values < threshold * values[0])
                horizon[row] = below[0] if below.size else np.inf
        return horizon

    def recurrent_theory(self, name: str) -> np.ndarray:
        """float64 [S, 2]: λ1 of W_hh and γ = max |σ'| at each recorded step (NaN for
        gated cells, where the bound (γ·λ1)^lag does not apply)."""
        rows = align_rows(self.steps, self._profile_rows(self.recurrent_layer(name), "theory"))
        return rows if rows.shape[1] else np.full((rows.shape[0], 2), np.nan)

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

    def _repr_html_(self) -> str:
        """The report as a notebook cell shows it: verdict, findings, table, two figures.

        The one place where a lower floor reaches up (lazily): a notebook shows an object
        by this method's name, so it cannot live beside the report."""
        from ..report.html import NOTEBOOK_FIGURES, render_report

        return render_report(self, fragment=True, include=NOTEBOOK_FIGURES)


class MemoryRun(RunView):
    """A run kept in memory only (``Probe(db=None)``); also the probe's sink."""

    def __init__(self) -> None:
        self._layers: list[LayerInfo] = []
        self._steps: list[int] = []
        self._series: dict[str, list[np.ndarray]] = {s: [] for s in LAYER_SERIES + STEP_SERIES}
        self._sparse: dict[tuple[str, ...], tuple[list[int], list[np.ndarray]]] = {}
        self._sentinel_steps: list[int] = []
        self._sentinel_rows: list[np.ndarray] = []
        self.sentinel_layers: tuple[str, ...] = ()  # set by the probe
        self._events: list[RunEvent] = []

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

    def _rows(self, key: tuple[str, ...]) -> SparseRows:
        steps, rows = self._sparse.get(key, ([], []))
        return np.asarray(steps, dtype=np.int64), [r.astype(np.float64) for r in rows]

    def _user_rows(self, stat: str) -> SparseRows:
        return self._rows((stat,))

    def _profile_rows(self, name: str, kind: str) -> SparseRows:
        return self._rows((name, kind))

    @property
    def scalar_names(self) -> list[str]:
        return sorted(k[0][len(USER_PREFIX) :] for k in self._sparse if len(k) == 1)

    @property
    def recurrent_layers(self) -> list[str]:
        return self._in_layer_order(k[0] for k in self._sparse if len(k) == 2)

    def set_layers(self, layers: list[LayerInfo]) -> None:
        self._layers = list(layers)

    @property
    def sentinel(self) -> SentinelSeries:
        if not self._sentinel_rows:
            return SentinelSeries.empty(self.sentinel_layers)
        return SentinelSeries.from_rows(
            np.asarray(self._sentinel_steps, np.int64),
            np.stack(self._sentinel_rows),
            self.sentinel_layers,
        )

    @property
    def events(self) -> list[RunEvent]:
        return list(self._events)

    def append_sentinel(self, step: int, row: np.ndarray) -> None:
        """Keeps one step's sentinel row (see :mod:`~backprobe.store.sentinel`)."""
        self._sentinel_steps.append(step)
        self._sentinel_rows.append(row)

    def add_event(self, step: int, kind: str, detail: dict) -> None:
        """Keeps an event of step ``step``."""
        self._events.append(RunEvent(step, kind, dict(detail)))

    def append(self, step: int, series: StepSeries, profiles: StepProfiles | None = None) -> None:
        """Keeps the step (see :meth:`~backprobe.store.sink.StepSink.append`)."""
        self._steps.append(step)
        sparse: list[tuple[tuple[str, ...], np.ndarray]] = [
            ((stat,), v) for stat, v in series.items() if stat.startswith(USER_PREFIX)
        ]
        sparse += list((profiles or {}).items())
        with np.errstate(over="ignore"):  # beyond float32's range is stored as inf
            for stat, values in series.items():
                if not stat.startswith(USER_PREFIX):
                    self._series[stat].append(np.asarray(values, dtype=np.float32))
            for key, values in sparse:
                steps, rows = self._sparse.setdefault(key, ([], []))
                steps.append(step)
                rows.append(np.asarray(values, dtype=np.float32).reshape(-1))

    def amend(self, step: int, series: StepSeries) -> None:
        """Replace some built-in series of step ``step``, appended already (usually the
        last one: found at once)."""
        last = len(self._steps) - 1
        row = last if last >= 0 and self._steps[last] == step else self._steps.index(step)
        for stat, values in series.items():
            self._series[stat][row] = np.asarray(values, dtype=np.float32)

    def flush(self) -> None:
        """Nothing to write: kept for the sink interface."""

    def close(self, status: str, error: str | None = None) -> None:
        """Nothing to release: kept for the sink interface."""

    def view(self) -> RunView:
        return self
