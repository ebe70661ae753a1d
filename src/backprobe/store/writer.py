"""Appending one run's records to the run database, batched.

Records are buffered in memory and written in one transaction at most ``flush_every``
seconds after they arrive (a background thread keeps that promise even when training
stalls), when a reader asks, and when the run closes — also at interpreter exit, so a
run that was never closed still keeps its data. A process killed with SIGKILL loses only
what arrived after the last flush.
"""

from __future__ import annotations

import atexit
import json
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from .db import RunDatabase
from .run import StoredRun
from .view import LayerInfo, RunView, StepProfiles, StepSeries

_open_writers: weakref.WeakSet[RunWriter] = weakref.WeakSet()


@atexit.register
def _close_open_writers() -> None:
    # An unhandled exception sets sys.last_value before atexit handlers run.
    exc = getattr(sys, "last_value", None)
    error = None if exc is None else f"{type(exc).__name__}: {exc} (probe closed at exit)"
    for writer in list(_open_writers):
        writer.close("finished" if exc is None else "failed", error=error)


class RunWriter:
    """Writes one run: its layers once, then per-step series rows, batched. With
    ``resume`` (a run's id or name), the stored run is continued from step ``first_step``
    instead of a new one created (see :meth:`RunDatabase.reopen_run`)."""

    def __init__(
        self,
        path: str | Path,
        name: str,
        config: dict,
        model: dict,
        flush_every: float = 2.0,
        resume: int | str | None = None,
        first_step: int = 0,
    ) -> None:
        self.db = RunDatabase(path, create=True)
        self.run_id = (
            self.db.create_run(name, config, model)
            if resume is None
            else self.db.reopen_run(resume, first_step)
        )
        self.flush_every = flush_every
        self._lock = threading.Lock()
        self._pending_layers: list[LayerInfo] | None = None
        self._pending_rows: list[tuple[int, str, int, bytes]] = []
        self._pending_profiles: list[tuple[int, str, str, int, bytes]] = []
        self._pending_sentinel: list[tuple[int, int, bytes]] = []
        self._pending_events: list[tuple[int, int, str, str]] = []
        self._closed = False
        self._wake = threading.Event()
        self._thread = threading.Thread(
            target=self._flush_loop, name="backprobe-flush", daemon=True
        )
        self._thread.start()
        _open_writers.add(self)

    def _flush_loop(self) -> None:
        while not self._wake.wait(self.flush_every):
            self.flush()

    def set_layers(self, layers: list[LayerInfo]) -> None:
        with self._lock:
            self._pending_layers = list(layers)

    def append(self, step: int, series: StepSeries, profiles: StepProfiles | None = None) -> None:
        """Buffers the step's rows (see :meth:`~backprobe.store.sink.StepSink.append`)."""
        with np.errstate(over="ignore"):  # beyond float32's range is stored as inf
            rows = [
                (self.run_id, stat, step, np.asarray(values, dtype=np.float32).tobytes())
                for stat, values in series.items()
            ]
            profile_rows = [
                (self.run_id, name, kind, step, np.asarray(v, dtype=np.float32).tobytes())
                for (name, kind), v in (profiles or {}).items()
            ]
        with self._lock:
            self._pending_rows.extend(rows)
            self._pending_profiles.extend(profile_rows)

    def append_sentinel(self, step: int, row: np.ndarray) -> None:
        """Buffers one step's sentinel row (see :mod:`~backprobe.store.sentinel`)."""
        with self._lock:
            self._pending_sentinel.append((self.run_id, step, row.tobytes()))

    def add_event(self, step: int, kind: str, detail: dict) -> None:
        """Buffers an event of step ``step`` (see :class:`~backprobe.store.sentinel.RunEvent`)."""
        with self._lock:
            self._pending_events.append((self.run_id, step, kind, json.dumps(detail, default=str)))

    def amend(self, step: int, series: StepSeries) -> None:
        """Replace some series of step ``step``, appended already (the overhead measured to
        the run's end, at the last recorded step); written at the next flush."""
        self.append(step, series)

    def flush(self) -> None:
        """Write everything buffered so far in one transaction."""
        with self._lock:
            pending = (
                self._pending_layers is not None
                or self._pending_rows
                or self._pending_profiles
                or self._pending_sentinel
                or self._pending_events
            )
            if self._closed or not pending:
                return
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                if self._pending_layers is not None:
                    conn.executemany(
                        "INSERT OR REPLACE INTO layers(run_id, idx, name, type, family, "
                        "n_params, frozen, role, ran, shared_with, block) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (
                                self.run_id,
                                lay.index,
                                lay.name,
                                lay.type,
                                lay.family,
                                lay.n_params,
                                int(lay.frozen),
                                lay.role,
                                int(lay.ran),
                                lay.shared_with,
                                lay.block,
                            )
                            for lay in self._pending_layers
                        ],
                    )
                conn.executemany(
                    "INSERT OR REPLACE INTO series(run_id, stat, step, data) VALUES (?, ?, ?, ?)",
                    self._pending_rows,
                )
                conn.executemany(
                    "INSERT OR REPLACE INTO time_profiles(run_id, name, kind, step, data) "
                    "VALUES (?, ?, ?, ?, ?)",
                    self._pending_profiles,
                )
                conn.executemany(
                    "INSERT OR REPLACE INTO sentinel(run_id, step, data) VALUES (?, ?, ?)",
                    self._pending_sentinel,
                )
                conn.executemany(
                    "INSERT INTO events(run_id, step, kind, detail) VALUES (?, ?, ?, ?)",
                    self._pending_events,
                )
                conn.execute("UPDATE runs SET updated=? WHERE id=?", (time.time(), self.run_id))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._pending_layers = None
            self._pending_rows = []
            self._pending_profiles = []
            self._pending_sentinel = []
            self._pending_events = []

    def close(self, status: str, error: str | None = None) -> None:
        """Flush, mark the run ``status`` ("finished" or "failed"), release the file."""
        if self._closed:
            return
        self._wake.set()
        self._thread.join()
        self.flush()
        with self._lock:
            self.db.conn.execute(
                "UPDATE runs SET status=?, error=?, updated=? WHERE id=?",
                (status, error, time.time(), self.run_id),
            )
            self.db.close()
            self._closed = True
        _open_writers.discard(self)

    def view(self) -> RunView:
        """A reader of everything written so far (flushes first)."""
        self.flush()
        return StoredRun(self.db.path, self.run_id)
