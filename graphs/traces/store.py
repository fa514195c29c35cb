"""The trace store: every graph run, LLM call, reward and training step in one SQLite file (WAL mode).

One file per project (default `./runs/traces.sqlite`) that several processes can write at once (batch runs,
a trainer) and a viewer can read while they do. Each run is written in a single transaction, so kill -9
loses at most the runs in flight and never corrupts the file. Token ids and logprobs are stored as packed
little-endian arrays (4 bytes each): a 2,000-token call costs 16 KB, not 40 KB of JSON.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
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
from emo_r3.graphs.traces.schema import MIGRATIONS, SCHEMA_VERSION
from emo_r3.graphs.trajectory import EmotionResult

DEFAULT_TRACE_PATH = Path("runs") / "traces.sqlite"
RunSource = Literal["run", "batch", "eval", "train"]


class TraceStoreError(RuntimeError):
    """The trace file cannot be opened or is from a newer EMO-R3; the message says which file and why."""


class TraceStore:
    """Read and write traces in one SQLite file. Thread-safe; safe for several processes at once."""

    def __init__(self, path: str | Path = DEFAULT_TRACE_PATH, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        self._known_images: set[str] = set()
        self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self.readonly and not self.path.is_file():
            raise TraceStoreError(f"no trace store at {self.path}; run `emo-r3 run` or `batch` to create one")
        try:
            if self.readonly:
                db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: durable at checkpoints, never corrupt
                db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=30000")  # concurrent writers wait for each other instead of failing
            db.row_factory = sqlite3.Row
            self._migrate(db)
        except sqlite3.DatabaseError as error:
            raise TraceStoreError(f"{self.path} is not a readable EMO-R3 trace store: {error}") from error
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise TraceStoreError(
                f"{self.path} has trace schema v{version}, newer than this EMO-R3 (v{SCHEMA_VERSION}); upgrade emo-r3"
            )
        if version == SCHEMA_VERSION or self.readonly:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

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
        """Store one finished run (calls, images, result) in one transaction; returns the run id."""
        trajectory = result.trajectory
        run_id = trajectory.id if trajectory else f"input-error-{result.query_id}-{time.time_ns()}"
        calls = trajectory.calls if trajectory else []
        # Thumbnailing costs more than writing a run's calls: do it once per distinct image.
        thumbnails = [(i.sha256, i.width, i.height, thumbnail_jpeg(i)) for i in images if not self._has_image(i.sha256)]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    run_row(run_id, result, source, config_hash, input_ref),
                )
                self._db.executemany("INSERT OR IGNORE INTO images VALUES (?,?,?,?)", thumbnails)
                self._db.executemany(
                    "INSERT INTO calls VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [call_row(run_id, index, call) for index, call in enumerate(calls)],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._known_images.update(sha for sha, *_ in thumbnails)
        return run_id

    def _has_image(self, sha256: str) -> bool:
        if sha256 in self._known_images:
            return True
        with self._lock:
            found = self._db.execute("SELECT 1 FROM images WHERE sha256 = ?", (sha256,)).fetchone() is not None
        if found:
            self._known_images.add(sha256)
        return found

    def record_rewards(self, run_id: str, breakdown: dict[str, float], *, role: str = "") -> None:
        """A named reward breakdown for a run (role "" = the whole trajectory); the training issue fills this."""
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO rewards VALUES (?,?,?,?)",
                [(run_id, role, name, float(value)) for name, value in breakdown.items()],
            )

    def record_training_step(
        self, run_name: str, step: int, metrics: dict[str, float], rows: Sequence[TrainingRowRecord] = ()
    ) -> None:
        """One optimizer step's metrics and the rows it trained on (each pointing at a recorded call)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO training_steps VALUES (?,?,?,?)",
                    (run_name, step, time.time(), json.dumps(metrics)),
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO training_rows VALUES (?,?,?,?,?,?,?)",
                    [(run_name, step, r.run_id, r.call_idx, r.policy, r.advantage, json.dumps(r.values)) for r in rows],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- reading ---------------------------------------------------------------------------------------

    def list_training_steps(self, run_name: str | None = None) -> list[TrainingStep]:
        """Steps without their rows, oldest first."""
        clause, params = (" WHERE run_name = ?", [run_name]) if run_name else ("", [])
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM training_steps{clause} ORDER BY run_name, step", params).fetchall()
        return [
            TrainingStep(
                run_name=r["run_name"], step=r["step"], created_at=r["created_at"], metrics=json.loads(r["metrics"])
            )
            for r in rows
        ]

    def get_training_step(self, run_name: str, step: int) -> TrainingStep:
        with self._lock:
            head = self._db.execute(
                "SELECT * FROM training_steps WHERE run_name = ? AND step = ?", (run_name, step)
            ).fetchone()
            rows = self._db.execute(
                "SELECT * FROM training_rows WHERE run_name = ? AND step = ? ORDER BY run_id, call_idx",
                (run_name, step),
            ).fetchall()
        if head is None:
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
        with self._lock:
            return self._db.execute(f"SELECT count(*) FROM runs{clause}", params).fetchone()[0]

    def list_runs(self, where: RunFilter | None = None, *, limit: int = 50, offset: int = 0) -> list[RunSummary]:
        """Newest first."""
        clause, params = (where or RunFilter()).where()
        query = f"SELECT {SUMMARY_COLUMNS} FROM runs{clause} ORDER BY created_at DESC, id LIMIT ? OFFSET ?"
        with self._lock:
            rows = self._db.execute(query, [*params, limit, offset]).fetchall()
        return [summary_from_row(row) for row in rows]

    def find_run(self, prefix: str) -> str:
        """Resolve a run id or a unique prefix of one (as `git` does for commits)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM runs WHERE id >= ? AND id < ? LIMIT 2", (prefix, prefix + "\uffff")
            ).fetchall()
        if len(rows) != 1:
            problem = "no run" if not rows else "more than one run"
            raise KeyError(f"{problem} with id starting {prefix!r} in {self.path}")
        return rows[0]["id"]

    def get_run(self, run_id: str) -> RunDetail:
        run_id = self.find_run(run_id)
        with self._lock:
            row = self._db.execute(f"SELECT {SUMMARY_COLUMNS}, result FROM runs WHERE id = ?", (run_id,)).fetchone()
            calls = self._db.execute("SELECT * FROM calls WHERE run_id = ? ORDER BY idx", (run_id,)).fetchall()
            rewards = self._db.execute("SELECT role, name, value FROM rewards WHERE run_id = ?", (run_id,)).fetchall()
        result = EmotionResult.model_validate_json(row["result"])
        if result.trajectory is not None:
            result.trajectory.calls = [call_from_row(c) for c in calls]
        breakdown: dict[str, dict[str, float]] = {}
        for reward in rewards:
            breakdown.setdefault(reward["role"], {})[reward["name"]] = reward["value"]
        return RunDetail(summary=summary_from_row(row), result=result, rewards=breakdown)

    def thumbnail(self, sha256: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT thumbnail FROM images WHERE sha256 = ?", (sha256,)).fetchone()
        return row["thumbnail"] if row else None

    def iter_runs(self, where: RunFilter | None = None, *, batch: int = 200) -> Iterator[RunDetail]:
        """Every matching run with its calls, newest first, read in pages (for export)."""
        offset = 0
        while page := self.list_runs(where, limit=batch, offset=offset):
            for summary in page:
                yield self.get_run(summary.id)
            offset += batch
