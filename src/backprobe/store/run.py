"""Reading a stored run: the same read API as a live Probe, from the run database alone."""

from __future__ import annotations

import os
from functools import cached_property

import numpy as np

from .db import RunDatabase, RunInfo
from .view import LayerInfo, RunView, series_width


class StoredRun(RunView):
    """A run read back from a run database; also one whose process died."""

    def __init__(self, path: str | os.PathLike, run: int | str) -> None:
        self._db = RunDatabase(path)
        try:
            self.id = self._db.resolve(run)
            self.info: RunInfo = next(r for r in self._db.runs() if r.id == self.id)
            rows = self._db.conn.execute(
                "SELECT idx, name, type, family, n_params, frozen FROM layers "
                "WHERE run_id=? ORDER BY idx",
                (self.id,),
            ).fetchall()
            self._layers = [LayerInfo(i, n, t, f, p, bool(z)) for i, n, t, f, p, z in rows]
            self._series = self._load_series()
        finally:
            self._db.close()

    def _load_series(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        rows = self._db.conn.execute(
            "SELECT stat, step, data FROM series WHERE run_id=? ORDER BY stat, step", (self.id,)
        ).fetchall()
        by_stat: dict[str, tuple[list[int], list[np.ndarray]]] = {}
        for stat, step, data in rows:
            steps, values = by_stat.setdefault(stat, ([], []))
            steps.append(step)
            values.append(np.frombuffer(data, dtype=np.float32))
        return {
            stat: (np.asarray(steps, np.int64), np.stack(values).astype(np.float64))
            for stat, (steps, values) in by_stat.items()
        }

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def status(self) -> str:
        return self.info.status

    @property
    def layer_info(self) -> list[LayerInfo]:
        return list(self._layers)

    @cached_property
    def steps(self) -> np.ndarray:  # type: ignore[override]
        return self._series.get("loss", (np.zeros(0, np.int64), None))[0]

    def _stored(self, stat: str) -> np.ndarray:
        if stat in self._series:
            return self._series[stat][1]
        return np.zeros((0, series_width(stat, len(self._layers))))


def open_run(db: str | os.PathLike, run: int | str) -> StoredRun:
    """Open a stored run by id or name (the newest of that name) for reading.

    ``run.layers``, ``run.steps`` and ``run.history(stat)`` work as on a Probe.
    """
    return StoredRun(db, run)
