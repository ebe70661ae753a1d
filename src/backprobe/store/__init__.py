"""The run database and the read API shared by live probes and stored runs."""

from .db import DB_ENV, DEFAULT_DB, RunDatabase, RunInfo
from .run import StoredRun, open_run
from .view import ALL_SERIES, LayerInfo, MemoryRun, RunView
from .writer import RunWriter

__all__ = [
    "ALL_SERIES",
    "DB_ENV",
    "DEFAULT_DB",
    "LayerInfo",
    "MemoryRun",
    "RunDatabase",
    "RunInfo",
    "RunView",
    "RunWriter",
    "StoredRun",
    "open_run",
]
