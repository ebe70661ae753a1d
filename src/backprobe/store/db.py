"""The run database: one SQLite file (standard library), many runs.

Opening checks that the file is a backprobe run database of a schema this version
reads; a corrupt or foreign file is refused with a clear error and never overwritten.
WAL mode and a busy timeout let several processes write different runs at once.
Readers open the file read-only, so a database on read-only storage can be listed and
shown; a writer there fails at once with one line that names the path.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .._version import __version__
from ..errors import RunDatabaseError, RunNotFoundError

DEFAULT_DB = Path("backprobe-runs") / "runs.db"
#: Environment variable naming the run database for the CLI.
DB_ENV = "BACKPROBE_DB"
SCHEMA_VERSION = 3
#: SQLite header field identifying our files (ASCII "BPRB").
APPLICATION_ID = 0x42505242
BUSY_TIMEOUT_S = 30.0
#: SQLite's primary result codes that mean "this storage cannot be written here".
_READ_ONLY_CODES = (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    status TEXT NOT NULL,              -- running | finished | failed
    created REAL NOT NULL,
    updated REAL NOT NULL,
    pid INTEGER, host TEXT,            -- to tell a live run from one whose process died
    backprobe_version TEXT,
    config TEXT NOT NULL DEFAULT '{}', -- JSON: probe options and the user's config
    model TEXT NOT NULL DEFAULT '{}',  -- JSON: model class, parameter count
    error TEXT
);
CREATE TABLE IF NOT EXISTS layers (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL, family TEXT NOT NULL,
    n_params INTEGER NOT NULL, frozen INTEGER NOT NULL,
    -- what is measured (layer | params | block), whether it ran, a layer tied to it,
    -- the residual block it is part of (see store.view.LayerInfo)
    role TEXT NOT NULL DEFAULT 'layer', ran INTEGER NOT NULL DEFAULT 1,
    shared_with TEXT NOT NULL DEFAULT '', block TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, idx)
);
-- one row per recorded step and statistic, data = float32 values over layers
CREATE TABLE IF NOT EXISTS series (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    stat TEXT NOT NULL, step INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (run_id, stat, step)
) WITHOUT ROWID;
-- one row per recorded step, recurrent (sub-)layer and kind ("signal": ||dL/dh_t|| over
-- time steps, "decay": ||dh_T/dh_(T-lag)|| over lags, "theory": lambda1, gamma),
-- data = float32 values
CREATE TABLE IF NOT EXISTS time_profiles (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL, kind TEXT NOT NULL, step INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (run_id, name, kind, step)
) WITHOUT ROWID;
-- one row per step() whatever the schedule (store.sentinel: loss, global and per-layer
-- gradient norms, the samples carrying the output gradient), data = float32 values
CREATE TABLE IF NOT EXISTS sentinel (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
-- what acted on the training (a Guard's skipped steps), detail = JSON
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS findings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER, kind TEXT NOT NULL, severity TEXT NOT NULL,
    payload TEXT NOT NULL               -- JSON: where, evidence, cause, remedies, references
);
"""

#: Columns schema 3 added to the layers table, with the defaults older layers read as.
_LAYER_COLUMNS_3 = {
    "role": "TEXT NOT NULL DEFAULT 'layer'",
    "ran": "INTEGER NOT NULL DEFAULT 1",
    "shared_with": "TEXT NOT NULL DEFAULT ''",
    "block": "TEXT NOT NULL DEFAULT ''",
}


#: Tables added to schema 3 without a new version (older readers ignore them): a
#: writer adds them to a file made before, a reader finds none there (no rows).
_ADDED_TABLES = ("sentinel", "events")


def _create_statements(tables: tuple[str, ...]) -> list[str]:
    """The ``CREATE TABLE`` statements of ``tables`` from the schema."""
    return [
        statement
        for statement in _SCHEMA.split(";")
        if any(f"CREATE TABLE IF NOT EXISTS {t} (" in statement for t in tables)
    ]


@dataclass(frozen=True)
class RunInfo:
    """A row of the runs table, with ``status`` "interrupted" for a run still marked
    running whose process on this host is gone."""

    id: int
    name: str
    status: str
    created: float
    updated: float
    steps: int
    layers: int
    config: dict
    model: dict
    error: str | None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_read_only_storage(exc: BaseException) -> bool:
    """Whether SQLite or the OS refused because the file or its folder cannot be written."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", 0) & 0xFF in _READ_ONLY_CODES
    return isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EROFS


def _folder_is_writable(path: Path) -> bool:
    return os.access(path.absolute().parent, os.W_OK)


class RunDatabase:
    """An open run database file; a context manager that closes it.

    ``create=True`` makes the file (and its folder) if missing; otherwise a missing file
    is an error. ``read_only=True`` opens it for reading only (what ``open_run`` and the
    listing do), which also works on read-only storage. The connection is usable from
    any thread; callers serialise access.
    """

    def __init__(
        self, path: str | os.PathLike, *, create: bool = False, read_only: bool = False
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only and not create
        if not self.path.exists():
            if not create:
                raise RunDatabaseError(
                    f"No run database at {self.path}. Record a run first (bp.Probe(model, "
                    f"db='{self.path}')), or give the path of an existing run database."
                )
            with self._writing():
                self.path.parent.mkdir(parents=True, exist_ok=True)
        elif self.path.is_dir():
            raise RunDatabaseError(f"{self.path} is a folder; expected a run database file.")
        with self._writing():
            self.conn = self._connect()
        self._check_or_create(create)

    def __enter__(self) -> RunDatabase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connect(self) -> sqlite3.Connection:
        target: str | Path = self.path
        if self.read_only:
            # mode=ro: a reader never writes, so the file may sit on read-only storage.
            # In WAL mode a reader still needs the "-shm" index beside the file, and
            # SQLite cannot make one in a folder nobody may write to: there, immutable=1
            # reads the file without locks or index. That is only right when no writer
            # can exist (a writable folder may hold a live writer) and when no "-wal"
            # file holds committed pages the main file lacks.
            target = f"{self.path.absolute().as_uri()}?mode=ro"
            wal = self.path.with_name(self.path.name + "-wal")
            if not _folder_is_writable(self.path) and not (wal.exists() and wal.stat().st_size):
                target += "&immutable=1"
        return sqlite3.connect(
            target,
            timeout=BUSY_TIMEOUT_S,
            check_same_thread=False,
            isolation_level=None,  # explicit BEGIN/COMMIT where we write
            uri=self.read_only,
        )

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Turns "read-only storage" from SQLite or the OS into a one-line error."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            if not _is_read_only_storage(exc):
                raise
            if getattr(self, "conn", None) is not None:
                self.conn.close()
            raise self._read_only_error(exc) from exc

    def _read_only_error(self, exc: BaseException) -> RunDatabaseError:
        if self.read_only:  # a "-wal" file beside it, and no index SQLite may create
            return RunDatabaseError(
                f"Cannot read the run database {self.path}: SQLite needs to write beside "
                f"it and its folder is read-only ({exc}). Copy the file (with its -wal "
                "file) to a writable folder and open the copy."
            )
        return RunDatabaseError(
            f"Cannot write the run database {self.path}: the file or its folder is "
            f"read-only ({exc}). Record to a run database on writable storage, or copy "
            "this one to a writable folder."
        )

    def _check_or_create(self, create: bool) -> None:
        c = self.conn
        try:
            # One read snapshot: another process may be creating the schema meanwhile.
            c.execute("BEGIN")
            app_id = c.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            c.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            c.close()
            if _is_read_only_storage(exc):
                raise self._read_only_error(exc) from exc
            raise RunDatabaseError(
                f"{self.path} is not a backprobe run database (SQLite says: {exc}). "
                "It was left untouched; give the path of a run database instead."
            ) from exc
        if app_id == APPLICATION_ID:
            self._check_version()
            if not self.read_only and not set(_ADDED_TABLES) <= tables:
                with self._writing():
                    self._add_tables()
        elif tables:
            self._refuse("it holds other tables (a foreign SQLite database)")
        elif not create:
            self._refuse("it is empty")
        else:
            with self._writing():
                self._create_schema()
        self.conn.execute("PRAGMA foreign_keys=ON")  # a reader that upgraded reconnected

    def _refuse(self, why: str) -> None:
        self.conn.close()
        raise RunDatabaseError(
            f"{self.path} is not a backprobe run database: {why}. It was left untouched; "
            "give the path of a run database instead."
        )

    def _check_version(self) -> None:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError:
            row = None  # our header, but the meta table is gone: damaged
        if row is None:
            self._refuse("its meta table has no schema version")
        version = int(row[0])
        if version < SCHEMA_VERSION:
            if self.read_only:
                self._upgrade_then_reopen()
            else:
                with self._writing():
                    self._upgrade()
        elif version > SCHEMA_VERSION:
            self.conn.close()
            raise RunDatabaseError(
                f"{self.path} has run database schema {version}, newer than this backprobe "
                f"({__version__}) reads (schema {SCHEMA_VERSION}). Upgrade backprobe."
            )

    def _upgrade_then_reopen(self) -> None:
        """A reader of an old-schema file: upgrade it with a writer, then read again."""
        self.conn.close()
        RunDatabase(self.path).close()
        self.conn = self._connect()

    def _upgrade(self) -> None:
        """Bring an older file up to date in one transaction (the runs are kept)."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if int(row[0]) == SCHEMA_VERSION:  # another process upgraded it meanwhile
                c.execute("COMMIT")
                return
            if int(row[0]) < 2:
                # Schema 1 had a time_profiles table keyed by layer index that no release
                # wrote to; schema 2 keys profiles by sub-layer name and kind.
                c.execute("DROP TABLE IF EXISTS time_profiles")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            # Schema 3 describes each layer's role; older layers get the defaults.
            columns = {r[1] for r in c.execute("PRAGMA table_info(layers)")}
            for column, declaration in _LAYER_COLUMNS_3.items():
                if column not in columns:
                    c.execute(f"ALTER TABLE layers ADD COLUMN {column} {declaration}")
            c.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def _add_tables(self) -> None:
        """Create the tables added to schema 3 in a file made before them."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            for statement in _create_statements(_ADDED_TABLES):
                c.execute(statement)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def has_table(self, name: str) -> bool:
        """Whether the file holds table ``name`` (one added to schema 3 may be missing
        from a file made before it and opened read-only since)."""
        row = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)
        ).fetchone()
        return row is not None

    def _create_schema(self) -> None:
        c = self.conn
        self._enable_wal()
        c.execute("BEGIN IMMEDIATE")  # two processes creating one file: one waits
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            c.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('application', 'backprobe'), "
                "('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            c.execute(f"PRAGMA application_id={APPLICATION_ID}")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def _enable_wal(self) -> None:
        # Switching to WAL needs an exclusive lock, and SQLite answers "database is locked"
        # at once, without waiting the busy timeout, while another process uses the file.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self) -> None:
        self.conn.close()

    # -- runs ---------------------------------------------------------------------------

    def create_run(self, name: str, config: dict, model: dict) -> int:
        """A new run marked running by this process; returns its id."""
        now = time.time()
        with self._writing():
            cur = self.conn.execute(
                "INSERT INTO runs(name, status, created, updated, pid, host, backprobe_version, "
                "config, model) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    now,
                    now,
                    os.getpid(),
                    socket.gethostname(),
                    __version__,
                    json.dumps(config, default=str),
                    json.dumps(model, default=str),
                ),
            )
        assert cur.lastrowid is not None  # set by every INSERT
        return cur.lastrowid

    def reopen_run(self, run: int | str, from_step: int) -> int:
        """Continue run ``run`` (an id or a name) from this process, e.g. a training run
        resumed from a checkpoint taken at step ``from_step``: marked running again, its
        error cleared, and what it recorded at ``from_step`` and later removed (those
        steps are trained again). Returns its id."""
        run_id = self.resolve(run)
        with self._writing():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.execute(
                    "UPDATE runs SET status='running', error=NULL, updated=?, pid=?, host=? "
                    "WHERE id=?",
                    (time.time(), os.getpid(), socket.gethostname(), run_id),
                )
                for table in ("series", "time_profiles", *_ADDED_TABLES):
                    self.conn.execute(
                        f"DELETE FROM {table} WHERE run_id=? AND step>=?", (run_id, from_step)
                    )
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        return run_id

    def runs(self) -> list[RunInfo]:
        """All runs, oldest first."""
        rows = self.conn.execute(
            "SELECT r.id, r.name, r.status, r.created, r.updated, r.pid, r.host, r.config, "
            "r.model, r.error, "
            "(SELECT COUNT(*) FROM series s WHERE s.run_id = r.id AND s.stat = 'loss'), "
            "(SELECT COUNT(*) FROM layers l WHERE l.run_id = r.id) "
            "FROM runs r ORDER BY r.id"
        ).fetchall()
        host = socket.gethostname()
        infos = []
        for (
            id_,
            name,
            status,
            created,
            updated,
            pid,
            run_host,
            config,
            model,
            error,
            steps,
            layers,
        ) in rows:
            if status == "running" and run_host == host and pid and not _pid_alive(pid):
                status = "interrupted"
            infos.append(
                RunInfo(
                    id_,
                    name,
                    status,
                    created,
                    updated,
                    steps,
                    layers,
                    json.loads(config),
                    json.loads(model),
                    error,
                )
            )
        return infos

    def resolve(self, run: int | str) -> int:
        """Run id from an id or a name (the newest run of that name)."""
        text = str(run)
        if text.isdigit():
            row = self.conn.execute("SELECT id FROM runs WHERE id=?", (int(text),)).fetchone()
        else:
            row = self.conn.execute(
                "SELECT id FROM runs WHERE name=? ORDER BY id DESC LIMIT 1", (text,)
            ).fetchone()
        if row is None:
            known = [f"{r.id} ({r.name})" for r in self.runs()[-5:]]
            raise RunNotFoundError(
                f"No run {run!r} in {self.path}. Expected a run id or name; "
                f"latest runs: {', '.join(known) if known else 'none'} "
                "(backprobe.store.RunDatabase(path).runs() lists them all)."
            )
        return int(row[0])

    # -- findings -------------------------------------------------------------------------

    def save_findings(self, run_id: int, findings: list[dict]) -> None:
        """Replace the run's stored findings by ``findings`` (``Finding.to_dict()``s), in
        one transaction, keeping their order."""
        with self._writing():
            self._replace_findings(run_id, findings)

    def _replace_findings(self, run_id: int, findings: list[dict]) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("DELETE FROM findings WHERE run_id=?", (run_id,))
            c.executemany(
                "INSERT INTO findings(run_id, step, kind, severity, payload) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (run_id, f.get("step"), f["kind"], f["severity"], json.dumps(f, default=str))
                    for f in findings
                ],
            )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def load_findings(self, run_id: int) -> list[dict]:
        """The run's stored findings as dicts (``Finding.from_dict`` reads them), in the
        order they were saved."""
        rows = self.conn.execute(
            "SELECT payload FROM findings WHERE run_id=? ORDER BY id", (run_id,)
        ).fetchall()
        return [json.loads(payload) for (payload,) in rows]
