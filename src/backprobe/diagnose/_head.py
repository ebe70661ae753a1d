"""A run cut before its first non-finite step: after a NaN, gradient profiles, saturation
and dead units describe the NaN, not the network, so the rules read only what came before."""

from __future__ import annotations

import numpy as np

from ..store.sentinel import RunEvent, SentinelSeries
from ..store.view import LayerInfo, RunView, SparseRows


class RunHead(RunView):
    """The first ``rows`` recorded steps of ``run``, with the same read API."""

    def __init__(self, run: RunView, rows: int) -> None:
        self._run = run
        self._rows = rows
        self.info = getattr(run, "info", None)  # a stored run's config (its "lr")

    @property
    def layer_info(self) -> list[LayerInfo]:
        return self._run.layer_info

    @property
    def steps(self) -> np.ndarray:
        return self._run.steps[: self._rows]

    def _stored(self, stat: str) -> np.ndarray:
        return self._run._stored(stat)[: self._rows]

    def _kept(self, sparse: SparseRows) -> SparseRows:
        steps, rows = sparse
        keep = np.isin(steps, self.steps)
        return steps[keep], [r for r, k in zip(rows, keep, strict=True) if k]

    def _user_rows(self, stat: str) -> SparseRows:
        return self._kept(self._run._user_rows(stat))

    def _profile_rows(self, name: str, kind: str) -> SparseRows:
        return self._kept(self._run._profile_rows(name, kind))

    @property
    def scalar_names(self) -> list[str]:
        return self._run.scalar_names

    def _last_step(self) -> int:
        steps = self.steps
        return int(steps[-1]) if steps.size else -1

    @property
    def sentinel(self) -> SentinelSeries:
        """The sentinel's steps up to the last recorded step kept."""
        return self._run.sentinel.until(self._last_step())

    @property
    def events(self) -> list[RunEvent]:
        return [e for e in self._run.events if e.step <= self._last_step()]

    @property
    def recurrent_layers(self) -> list[str]:
        return self._run.recurrent_layers
