"""The trace store: every graph run, LLM call, reward and training step in one SQLite file (WAL mode).

One file per project (default `./runs/traces.sqlite`) that several processes can write at once (batch runs,
a trainer) and a viewer can read while they do. Each run is written in a single transaction, so kill -9
loses at most the runs in flight and never corrupts the file. Token ids and logprobs are stored as packed
little-endian arrays (4 bytes each): a 2,000-token call costs 16 KB, not 40 KB of JSON.

Every failure is a `TraceStoreError` that names the file, the real cause and what to do: a full disk, another
application's database, an empty file, an older or newer schema, a damaged page (checked with `PRAGMA quick_check`)
or text that is not UTF-8. A failed write leaves the store exactly as it was before it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal

from emo_r3.agents.images import PreparedImage
from emo_r3.graphs.traces.records import RunDetail, RunFilter, RunSummary, TrainingRowRecord, TrainingStep
from emo_r3.graphs.traces.rows import (
    SUMMARY_COLUMNS,
    call_from_row,
    call_row,
    run_row,
    summary_from_row,
    thumbnail_jpeg,
)
from emo_r3.graphs.traces.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    apply_migrations,
    expected_tables,
    table_columns,
    table_names,
)
from emo_r3.graphs.trajectory import EmotionResult

logger = logging.getLogger(__name__)

DEFAULT_TRACE_PATH = Path("runs") / "traces.sqlite"
RunSource = Literal["run", "batch", "eval", "train"]
BUSY_TIMEOUT_MS = 30_000  # concurrent writers wait for each other this long instead of failing

# What to do about an SQLite failure, by its primary result code (the message names the cause itself).
_ADVICE = {
    sqlite3.SQLITE_FULL: "the disk (or the store's size limit) is full: free some space and run again; the runs "
    "already stored are intact",
    sqlite3.SQLITE_READONLY: "the file or its folder is read-only for this user: fix the permissions or point "
    "--traces at another file",
    sqlite3.SQLITE_PERM: "this user may not write the file: fix the permissions or point --traces at another file",
    sqlite3.SQLITE_BUSY: f"another process kept the store locked for {BUSY_TIMEOUT_MS // 1000} s: try again",
    sqlite3.SQLITE_LOCKED: "another connection kept the store locked: try again",
    sqlite3.SQLITE_IOERR: "the disk failed to read or write: check it (and keep the store on a local disk)",
    sqlite3.SQLITE_CANTOPEN: "the file cannot be opened: check that it and its folder exist and are readable",
}
# Failures that say nothing about the file's state: no point running quick_check for them.
_NOT_DAMAGE = {
    sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_INTERRUPT, sqlite3.SQLITE_CONSTRAINT,
    sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_AUTH,
}  # fmt: skip
_START_FRESH = "point --traces at a trace store, or at a new file to start one"


class TraceStoreError(RuntimeError):
    """The trace file cannot be opened, read or written; the message says which file, the real cause, what to do."""


class TraceStore:
    """Read and write traces in one SQLite file. Thread-safe; safe for several processes at once.

    `readonly` opens an existing store without ever changing it (the viewer, `emo-r3 traces`). `max_bytes` caps how
    large this connection lets the database grow (SQLite's `max_page_count`; it never shrinks a larger file): a
    write past it fails exactly like one on a full disk, with nothing half-written. None = no limit.
    """

    def __init__(
        self, path: str | Path = DEFAULT_TRACE_PATH, *, readonly: bool = False, max_bytes: int | None = None
    ) -> None:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive number of bytes, got {max_bytes}")
        self.path = Path(path)
        self.readonly = readonly
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._known_images: set[str] = set()
        self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self.readonly and not self.path.is_file():
            raise TraceStoreError(f"no trace store at {self.path}; run `emo-r3 run` or `batch` to create one")
        if self.readonly and self.path.stat().st_size == 0:
            raise self._empty()
        db = None
        try:
            if self.readonly:
                db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            else:
                _make_folder(self.path.parent)
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db.row_factory = sqlite3.Row
            version = self._check_schema(db)  # before anything below changes someone else's file
            if not self.readonly:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: durable at checkpoints, never corrupt
                db.execute("PRAGMA foreign_keys=ON")
                if self.max_bytes is not None:
                    page_size = db.execute("PRAGMA page_size").fetchone()[0]
                    db.execute(f"PRAGMA max_page_count = {max(1, self.max_bytes // page_size)}")
                self._migrate(db, version)
        except sqlite3.Error as error:
            failure = self._failure(error, "open the trace store", db)
            _close_quietly(db)
            raise failure from error
        except BaseException:
            _close_quietly(db)
            raise
        return db

    def _empty(self) -> TraceStoreError:
        return TraceStoreError(
            f"{self.path} is empty, not a trace store yet: record a run into it first "
            f"(`emo-r3 run IMAGE --traces {self.path}`), or point --traces at an existing store"
        )

    def _check_schema(self, db: sqlite3.Connection) -> int:
        """The store's schema version, once its tables and columns are known to be EMO-R3's; else a clear error."""
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = table_names(db)
        if tables and (version == 0 or not expected_tables(MIGRATIONS).keys() & set(tables)):
            raise TraceStoreError(
                f"{self.path} is not an EMO-R3 trace store (it holds tables {_listing(tables)}); {_START_FRESH}"
            )
        if version > SCHEMA_VERSION:
            raise TraceStoreError(
                f"{self.path} has trace schema v{version}, newer than this EMO-R3 (v{SCHEMA_VERSION}); upgrade emo-r3"
            )
        if version == 0:  # a new or empty file: a writer creates the schema in it
            if self.readonly:
                raise self._empty()
            return version
        missing = []
        for table, columns in expected_tables(MIGRATIONS[:version]).items():
            if table not in tables:
                missing.append(f"table {table}")
            else:
                missing += [f"column {table}.{c}" for c in sorted(columns - table_columns(db, table))]
        if missing:
            raise TraceStoreError(
                f"{self.path} is not a complete EMO-R3 trace store: schema v{version} needs {_listing(missing)}, "
                "which it lacks (something other than EMO-R3 changed it, or it is damaged); restore it from a "
                f"backup, or {_START_FRESH}"
            )
        if self.readonly and version < SCHEMA_VERSION:
            raise TraceStoreError(
                f"{self.path} has trace schema v{version}, older than this EMO-R3 (v{SCHEMA_VERSION}), and readers "
                "never change the file: open it once for writing to migrate it (any command that records into it "
                f"does, e.g. `emo-r3 run IMAGE --traces {self.path}`, or `TraceStore(path).close()` in Python)"
            )
        return version

    def _migrate(self, db: sqlite3.Connection, version: int) -> None:
        if version == SCHEMA_VERSION:
            return
        with _transaction(db):
            version = db.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                apply_migrations(db, [script])
                db.execute(f"PRAGMA user_version = {number}")

    @contextmanager
    def _writing(self, what: str) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock: all of it is written, or (rolled back) none of it."""
        with self._lock:
            try:
                with _transaction(self._db):
                    yield self._db
            except sqlite3.Error as error:
                raise self._failure(error, f"record {what}", self._db) from error

    @contextmanager
    def _reading(self, what: str) -> Iterator[sqlite3.Connection]:
        """Under the lock; a failing read or a row that does not decode is a TraceStoreError that says why."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as error:
                raise self._failure(error, f"read {what}", self._db) from error
            except (ValueError, TypeError, IndexError) as error:  # JSON, model or packed arrays that do not decode
                raise TraceStoreError(
                    f"{self.path} holds a damaged record (reading {what}: {_short(error)}): something other than "
                    "EMO-R3 changed it, or the file is damaged"
                ) from error

    def _failure(self, error: sqlite3.Error, doing: str, db: sqlite3.Connection | None) -> TraceStoreError:
        """The error to raise for an SQLite failure: its real cause, whether the file is damaged, what to do."""
        cause = _short(error)
        code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
        if code == sqlite3.SQLITE_NOTADB:
            return TraceStoreError(
                f"{self.path} is not an EMO-R3 trace store: it is not an SQLite database at all ({cause}); "
                f"{_START_FRESH}"
            )
        if cause.startswith("Could not decode to UTF-8"):
            return TraceStoreError(
                f"{self.path} holds text that is not valid UTF-8, which EMO-R3 never writes: something else changed "
                f"the file, or it is damaged (could not {doing}: {cause})"
            )
        if isinstance(error, sqlite3.DatabaseError) and code not in _NOT_DAMAGE and db is not None:
            problems = _quick_check(db)
            if problems:
                return TraceStoreError(
                    f'{self.path} is damaged: SQLite\'s quick_check reports "{problems}" (could not {doing}: '
                    f"{cause}); restore it from a backup, or move it away and start a new store (`sqlite3 "
                    f"{self.path} .recover` may save some of its runs)"
                )
        advice = _ADVICE.get(code)
        return TraceStoreError(f"could not {doing} in {self.path}: {cause}" + (f"; {advice}" if advice else ""))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------------------

    def record_run(
        self,
        result: EmotionResult,
        *,
        source: RunSource = "run",
        images: Sequence[PreparedImage] = (),
        config_hash: str | None = None,
        input_ref: str | None = None,
    ) -> str:
        """Store one finished run (calls, images, result) in one transaction; returns the run id.

        Raises TraceStoreError (full disk, damaged file, ...) with nothing of the run written.
        """
        trajectory = result.trajectory
        run_id = trajectory.id if trajectory else f"input-error-{result.query_id}-{time.time_ns()}"
        calls = trajectory.calls if trajectory else []
        # Thumbnailing costs more than writing a run's calls: do it once per distinct image.
        thumbnails = [(i.sha256, i.width, i.height, thumbnail_jpeg(i)) for i in images if not self._has_image(i.sha256)]
        with self._writing(f"run {run_id}") as db:
            db.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                run_row(run_id, result, source, config_hash, input_ref),
            )
            db.executemany("INSERT OR IGNORE INTO images VALUES (?,?,?,?)", thumbnails)
            db.executemany(
                "INSERT INTO calls VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [call_row(run_id, index, call) for index, call in enumerate(calls)],
            )
        self._known_images.update(sha for sha, *_ in thumbnails)  # only once they are committed
        return run_id

    def _has_image(self, sha256: str) -> bool:
        if sha256 in self._known_images:
            return True
        with self._reading("the image list") as db:
            found = db.execute("SELECT 1 FROM images WHERE sha256 = ?", (sha256,)).fetchone() is not None
        if found:
            self._known_images.add(sha256)
        return found

    def record_rewards(self, run_id: str, breakdown: dict[str, float], *, role: str = "") -> None:
        """A named reward breakdown for a run (role "" = the whole trajectory); the training issue fills this."""
        rows = [(run_id, role, name, float(value)) for name, value in breakdown.items()]
        with self._writing(f"the rewards of run {run_id}") as db:
            db.executemany("INSERT OR REPLACE INTO rewards VALUES (?,?,?,?)", rows)

    def record_training_step(
        self, run_name: str, step: int, metrics: dict[str, float], rows: Sequence[TrainingRowRecord] = ()
    ) -> None:
        """One optimizer step's metrics and the rows it trained on (each pointing at a recorded call)."""
        with self._writing(f"training step {step} of {run_name!r}") as db:
            db.execute(
                "INSERT OR REPLACE INTO training_steps VALUES (?,?,?,?)",
                (run_name, step, time.time(), json.dumps(metrics)),
            )
            db.executemany(
                "INSERT OR REPLACE INTO training_rows VALUES (?,?,?,?,?,?,?)",
                [(run_name, step, r.run_id, r.call_idx, r.policy, r.advantage, json.dumps(r.values)) for r in rows],
            )

    # -- reading ---------------------------------------------------------------------------------------

    def list_training_steps(self, run_name: str | None = None) -> list[TrainingStep]:
        """Steps without their rows, oldest first."""
        clause, params = (" WHERE run_name = ?", [run_name]) if run_name else ("", [])
        with self._reading("the training steps") as db:
            rows = db.execute(f"SELECT * FROM training_steps{clause} ORDER BY run_name, step", params).fetchall()
            return [
                TrainingStep(
                    run_name=r["run_name"], step=r["step"], created_at=r["created_at"], metrics=json.loads(r["metrics"])
                )
                for r in rows
            ]

    def get_training_step(self, run_name: str, step: int) -> TrainingStep:
        with self._reading(f"training step {step} of {run_name!r}") as db:
            head = db.execute(
                "SELECT * FROM training_steps WHERE run_name = ? AND step = ?", (run_name, step)
            ).fetchone()
            rows = db.execute(
                "SELECT * FROM training_rows WHERE run_name = ? AND step = ? ORDER BY run_id, call_idx",
                (run_name, step),
            ).fetchall()
            if head is None:  # a KeyError passes through _reading unchanged
                raise KeyError(f"no training step {step} of run {run_name!r} in {self.path}")
            return TrainingStep(
                run_name=run_name,
                step=step,
                created_at=head["created_at"],
                metrics=json.loads(head["metrics"]),
                rows=[
                    TrainingRowRecord(
                        run_id=r["run_id"],
                        call_idx=r["call_idx"],
                        policy=r["policy"],
                        advantage=r["advantage"],
                        values=json.loads(r["values_json"]),
                    )
                    for r in rows
                ],
            )

    def count_runs(self, where: RunFilter | None = None) -> int:
        clause, params = (where or RunFilter()).where()
        with self._reading("the run count") as db:
            return db.execute(f"SELECT count(*) FROM runs{clause}", params).fetchone()[0]

    def list_runs(self, where: RunFilter | None = None, *, limit: int = 50, offset: int = 0) -> list[RunSummary]:
        """Newest first."""
        clause, params = (where or RunFilter()).where()
        query = f"SELECT {SUMMARY_COLUMNS} FROM runs{clause} ORDER BY created_at DESC, id LIMIT ? OFFSET ?"
        with self._reading("the run list") as db:
            rows = db.execute(query, [*params, limit, offset]).fetchall()
            return [summary_from_row(row) for row in rows]

    def find_run(self, prefix: str) -> str:
        """Resolve a run id or a unique prefix of one (as `git` does for commits)."""
        with self._reading("the run ids") as db:
            rows = db.execute(
                "SELECT id FROM runs WHERE id >= ? AND id < ? LIMIT 2", (prefix, prefix + "\uffff")
            ).fetchall()
            ids = [row["id"] for row in rows]
        if len(ids) != 1:
            problem = "no run" if not ids else "more than one run"
            raise KeyError(f"{problem} with id starting {prefix!r} in {self.path}")
        return ids[0]

    def has_run(self, run_id: str) -> bool:
        """Whether a run with exactly this id is stored (e.g. to check that a run's trace was written)."""
        with self._reading("the run ids") as db:
            return db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is not None

    def get_run(self, run_id: str) -> RunDetail:
        run_id = self.find_run(run_id)
        with self._reading(f"run {run_id}") as db:
            row = db.execute(f"SELECT {SUMMARY_COLUMNS}, result FROM runs WHERE id = ?", (run_id,)).fetchone()
            calls = db.execute("SELECT * FROM calls WHERE run_id = ? ORDER BY idx", (run_id,)).fetchall()
            rewards = db.execute("SELECT role, name, value FROM rewards WHERE run_id = ?", (run_id,)).fetchall()
            result = EmotionResult.model_validate_json(row["result"])
            if result.trajectory is not None:
                result.trajectory.calls = [call_from_row(c) for c in calls]
            breakdown: dict[str, dict[str, float]] = {}
            for reward in rewards:
                breakdown.setdefault(reward["role"], {})[reward["name"]] = reward["value"]
            return RunDetail(summary=summary_from_row(row), result=result, rewards=breakdown)

    def thumbnail(self, sha256: str) -> bytes | None:
        with self._reading(f"image {sha256}") as db:
            row = db.execute("SELECT thumbnail FROM images WHERE sha256 = ?", (sha256,)).fetchone()
            return row["thumbnail"] if row else None

    def iter_runs(self, where: RunFilter | None = None, *, batch: int = 200) -> Iterator[RunDetail]:
        """Every matching run with its calls, newest first, read in pages (for export)."""
        offset = 0
        while page := self.list_runs(where, limit=batch, offset=offset):
            for summary in page:
                yield self.get_run(summary.id)
            offset += batch


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        _roll_back(db)
        raise


def _roll_back(db: sqlite3.Connection) -> None:
    """Undo a failed transaction. SQLite has already rolled back after some failures (a full disk): roll back only
    while one is open, and never let a failing rollback replace the error that caused it (that one is raised)."""
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.Error as error:
        logger.warning("could not roll back a failed trace store transaction: %s", error)


def _quick_check(db: sqlite3.Connection) -> str | None:
    """What SQLite's `PRAGMA quick_check` finds wrong with the file (its first few problems), or None if nothing."""
    try:
        rows = [str(row[0]) for row in db.execute("PRAGMA quick_check(3)").fetchall()]
    except sqlite3.Error as error:
        return f"that it cannot even be checked ({_short(error)})"
    if rows == ["ok"]:
        return None
    lines = [line.strip() for row in rows for line in row.splitlines()]
    problems = [line for line in lines if line and not line.startswith("*** in database")]  # drop the headings
    return _short("; ".join(problems) or "problems")


def _short(error: object, limit: int = 300) -> str:
    """An error's first line, cut to `limit` characters (SQLite echoes whole undecodable values)."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or error
        raise TraceStoreError(f"cannot create the folder {folder} for the trace store: {reason}") from error


def _close_quietly(db: sqlite3.Connection | None) -> None:
    if db is not None:
        with suppress(sqlite3.Error):
            db.close()
