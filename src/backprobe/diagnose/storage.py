"""Findings kept with their run: computed by ``backprobe diagnose``, shown by ``backprobe show``.

They live in the run database's ``findings`` table (one row per finding, JSON payload);
saving replaces the run's earlier findings, so the stored set is always one diagnosis.
"""

from __future__ import annotations

import os

from ..store.db import RunDatabase
from .finding import Finding


def save_findings(db: str | os.PathLike, run: int | str, findings: list[Finding]) -> int:
    """Store ``findings`` for ``run`` (id or name), replacing earlier ones; returns the
    run id."""
    with RunDatabase(db) as database:
        run_id = database.resolve(run)
        database.save_findings(run_id, [f.to_dict() for f in findings])
    return run_id


def load_findings(db: str | os.PathLike, run: int | str) -> list[Finding]:
    """The findings stored for ``run`` (id or name), in the order they were saved (most
    severe first); empty when the run was never diagnosed."""
    with RunDatabase(db, read_only=True) as database:
        rows = database.load_findings(database.resolve(run))
    return [Finding.from_dict(row) for row in rows]
