"""Reading a stored run: the same read API as a live Probe, from the run database alone."""

from __future__ import annotations

import json
import os
from functools import cached_property

import numpy as np

from .db import RunDatabase, RunInfo
from .sentinel import LAYERS_KEY, RunEvent, SentinelSeries
from .view import USER_PREFIX, LayerInfo, RunView, SparseRows, series_width


class StoredRun(RunView):
    """A run read back from a run database; also one whose process died."""

    def __init__(self, path: str | os.PathLike, run: int | str) -> None:
        with RunDatabase(path, read_only=True) as self._db:
            self.id = self._db.resolve(run)
            self.info: RunInfo = next(r for r in self._db.runs() if r.id == self.id)
            rows = self._db.conn.execute(
                "SELECT idx, name, type, family, n_params, frozen, role, ran, shared_with, "
                "block FROM layers WHERE run_id=? ORDER BY idx",
                (self.id,),
            ).fetchall()
            self._layers = [
                LayerInfo(i, n, t, f, p, bool(z), role, bool(ran), tied, block)
                for i, n, t, f, p, z, role, ran, tied, block in rows
            ]
            self._series = self._load_series()
            self._profiles = self._load_profiles()
            self._sentinel = self._load_sentinel()
            self._events = self._load_events()

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

    def _load_profiles(self) -> dict[tuple[str, str], SparseRows]:
        rows = self._db.conn.execute(
            "SELECT name, kind, step, data FROM time_profiles WHERE run_id=? "
            "ORDER BY name, kind, step",
            (self.id,),
        ).fetchall()
        by_key: dict[tuple[str, str], tuple[list[int], list[np.ndarray]]] = {}
        for name, kind, step, data in rows:
            steps, values = by_key.setdefault((name, kind), ([], []))
            steps.append(step)
            values.append(np.frombuffer(data, dtype=np.float32).astype(np.float64))
        return {key: (np.asarray(s, np.int64), v) for key, (s, v) in by_key.items()}

    def _load_sentinel(self) -> SentinelSeries:
        layers = tuple(str(name) for name in self.probe_config.get(LAYERS_KEY) or ())
        if not self._db.has_table("sentinel"):  # a file made before the sentinel
            return SentinelSeries.empty(layers)
        rows = self._db.conn.execute(
            "SELECT step, data FROM sentinel WHERE run_id=? ORDER BY step", (self.id,)
        ).fetchall()
        if not rows:
            return SentinelSeries.empty(layers)
        steps = np.asarray([step for step, _ in rows], np.int64)
        data = np.stack([np.frombuffer(blob, dtype=np.float32) for _, blob in rows])
        return SentinelSeries.from_rows(steps, data, layers)

    def _load_events(self) -> list[RunEvent]:
        if not self._db.has_table("events"):
            return []
        rows = self._db.conn.execute(
            "SELECT step, kind, detail FROM events WHERE run_id=? ORDER BY id", (self.id,)
        ).fetchall()
        return [RunEvent(step, kind, json.loads(detail)) for step, kind, detail in rows]

    @property
    def sentinel(self) -> SentinelSeries:
        return self._sentinel

    @property
    def events(self) -> list[RunEvent]:
        return list(self._events)

    @property
    def run_id(self) -> int:
        """The run's id in its database, as a recording Probe's ``run_id`` says it."""
        return self.id

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def probe_config(self) -> dict:
        probe = self.info.config.get("probe", {})
        return probe if isinstance(probe, dict) else {}

    @property
    def status(self) -> str:
        return self.info.status

    @property
    def layer_info(self) -> list[LayerInfo]:
        return list(self._layers)

    @cached_property
    def steps(self) -> np.ndarray:
        return self._series.get("loss", (np.zeros(0, np.int64), None))[0]

    def _stored(self, stat: str) -> np.ndarray:
        if stat in self._series:
            return self._series[stat][1]
        # a statistic this run never stored (recorded by an older version): NaN
        return np.full((self.steps.size, series_width(stat, len(self._layers))), np.nan)

    def _user_rows(self, stat: str) -> SparseRows:
        steps, values = self._series.get(stat, (np.zeros(0, np.int64), np.zeros((0, 1))))
        return steps, list(values)

    def _profile_rows(self, name: str, kind: str) -> SparseRows:
        return self._profiles.get((name, kind), (np.zeros(0, np.int64), []))

    @property
    def scalar_names(self) -> list[str]:
        return sorted(s[len(USER_PREFIX) :] for s in self._series if s.startswith(USER_PREFIX))

    @property
    def recurrent_layers(self) -> list[str]:
        return self._in_layer_order(name for name, _ in self._profiles)


def open_run(db: str | os.PathLike, run: int | str) -> StoredRun:
    """Open a stored run by id or name (the newest of that name) for reading.

    ``run.layers``, ``run.steps`` and ``run.history(stat)`` work as on a Probe.
    """
    return StoredRun(db, run)
