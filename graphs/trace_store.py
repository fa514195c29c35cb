"""The trace store: every graph run, LLM call, reward and training step in one SQLite file (WAL mode).

One file per project (default `./runs/traces.sqlite`) that several processes can write at once (batch runs,
a trainer) and a viewer can read while they do. Each run is written in a single transaction, so kill -9
loses at most the runs in flight and never corrupts the file. Token ids and logprobs are stored as packed
little-endian arrays (4 bytes each): a 2,000-token call costs 16 KB, not 40 KB of JSON.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
import time
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel

from agents.call_record import LLMCall
from agents.images import PreparedImage
from graphs.trajectory import EmotionResult

DEFAULT_TRACE_PATH = Path("runs") / "traces.sqlite"
THUMBNAIL_SIZE = (256, 256)
RunSource = Literal["run", "batch", "eval", "train"]


class TraceStoreError(RuntimeError):
    """The trace file cannot be opened or is from a newer EMO-R3; the message says which file and why."""


# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        source TEXT NOT NULL,
        config_hash TEXT,
        input_ref TEXT,
        query_id TEXT NOT NULL,
        text TEXT,
        label_set TEXT NOT NULL,
        image_hashes TEXT NOT NULL,
        status TEXT NOT NULL,
        termination TEXT NOT NULL,
        label TEXT,
        valence TEXT,
        arousal TEXT,
        format_ok INTEGER NOT NULL,
        rounds INTEGER NOT NULL,
        path TEXT NOT NULL,
        error TEXT,
        latency_s REAL NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        result TEXT NOT NULL
    );
    CREATE INDEX runs_by_time ON runs (created_at DESC);
    CREATE INDEX runs_by_status ON runs (status, created_at DESC);
    CREATE INDEX runs_by_label ON runs (label, created_at DESC);
    CREATE INDEX runs_by_termination ON runs (termination, created_at DESC);
    CREATE TABLE images (
        sha256 TEXT PRIMARY KEY,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        thumbnail BLOB
    );
    CREATE TABLE calls (
        run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        role TEXT NOT NULL,
        purpose TEXT NOT NULL,
        node TEXT NOT NULL,
        round INTEGER NOT NULL,
        model_id TEXT NOT NULL,
        adapter TEXT,
        weight_version TEXT NOT NULL,
        messages TEXT NOT NULL,
        choices TEXT,
        sampling TEXT NOT NULL,
        text TEXT NOT NULL,
        prompt_ids BLOB NOT NULL,
        completion_ids BLOB NOT NULL,
        logprobs BLOB NOT NULL,
        logprob_mode TEXT NOT NULL,
        finish_reason TEXT NOT NULL,
        latency_s REAL NOT NULL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        parsed TEXT,
        error TEXT,
        PRIMARY KEY (run_id, idx)
    );
    CREATE TABLE rewards (
        run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        name TEXT NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (run_id, role, name)
    );
    CREATE TABLE training_steps (
        run_name TEXT NOT NULL,
        step INTEGER NOT NULL,
        created_at REAL NOT NULL,
        metrics TEXT NOT NULL,
        PRIMARY KEY (run_name, step)
    );
    CREATE TABLE training_rows (
        run_name TEXT NOT NULL,
        step INTEGER NOT NULL,
        run_id TEXT NOT NULL,
        call_idx INTEGER NOT NULL,
        policy TEXT NOT NULL,
        advantage REAL NOT NULL,
        values_json TEXT NOT NULL,
        PRIMARY KEY (run_name, step, run_id, call_idx)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class RunSummary(BaseModel):
    """One row of the run list."""

    id: str
    created_at: float
    source: str
    query_id: str
    input_ref: str | None
    label_set: str
    status: str
    termination: str
    label: str | None
    format_ok: bool
    rounds: int
    path: list[str]
    error: str | None
    latency_s: float
    image_hashes: list[str]


class RunFilter(BaseModel):
    status: Literal["ok", "error"] | None = None
    label: str | None = None
    termination: str | None = None
    since: float | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for column in ("status", "label", "termination"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.since is not None:
            clauses.append("created_at >= ?")
            params.append(self.since)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class TrainingRowRecord(BaseModel):
    """What one training step did with one LLM call: the link from a chart back to the call it trained on."""

    run_id: str
    call_idx: int
    policy: str
    advantage: float
    values: dict[str, float] = {}  # e.g. loss, kl, ratio, clip fraction, entropy for this row


class TrainingStep(BaseModel):
    run_name: str
    step: int
    created_at: float
    metrics: dict[str, float]
    rows: list[TrainingRowRecord] = []


class RunDetail(BaseModel):
    summary: RunSummary
    result: EmotionResult
    rewards: dict[str, dict[str, float]]  # role ("" = whole trajectory) -> name -> value


def pack_ints(values: Sequence[int]) -> bytes:
    return array("i", values).tobytes()


def unpack_ints(blob: bytes) -> list[int]:
    return array("i", blob).tolist()


def pack_floats(values: Sequence[float]) -> bytes:
    return array("f", values).tobytes()


def unpack_floats(blob: bytes) -> list[float]:
    return array("f", blob).tolist()


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
        thumbnails = [(i.sha256, i.width, i.height, _thumbnail(i)) for i in images if not self._has_image(i.sha256)]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    _run_row(run_id, result, source, config_hash, input_ref),
                )
                self._db.executemany("INSERT OR IGNORE INTO images VALUES (?,?,?,?)", thumbnails)
                self._db.executemany(
                    "INSERT INTO calls VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [_call_row(run_id, index, call) for index, call in enumerate(calls)],
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
        query = f"SELECT {_SUMMARY_COLUMNS} FROM runs{clause} ORDER BY created_at DESC, id LIMIT ? OFFSET ?"
        with self._lock:
            rows = self._db.execute(query, [*params, limit, offset]).fetchall()
        return [_summary(row) for row in rows]

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
            row = self._db.execute(f"SELECT {_SUMMARY_COLUMNS}, result FROM runs WHERE id = ?", (run_id,)).fetchone()
            calls = self._db.execute("SELECT * FROM calls WHERE run_id = ? ORDER BY idx", (run_id,)).fetchall()
            rewards = self._db.execute("SELECT role, name, value FROM rewards WHERE run_id = ?", (run_id,)).fetchall()
        result = EmotionResult.model_validate_json(row["result"])
        if result.trajectory is not None:
            result.trajectory.calls = [_call_from_row(c) for c in calls]
        breakdown: dict[str, dict[str, float]] = {}
        for reward in rewards:
            breakdown.setdefault(reward["role"], {})[reward["name"]] = reward["value"]
        return RunDetail(summary=_summary(row), result=result, rewards=breakdown)

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


_SUMMARY_COLUMNS = (
    "id, created_at, source, query_id, input_ref, label_set, status, termination, label, format_ok, rounds, "
    "path, error, latency_s, image_hashes"
)


def _summary(row: sqlite3.Row) -> RunSummary:
    fields = {key: row[key] for key in _SUMMARY_COLUMNS.split(", ")}
    fields["path"] = json.loads(fields["path"])
    fields["image_hashes"] = json.loads(fields["image_hashes"])
    fields["format_ok"] = bool(fields["format_ok"])
    return RunSummary.model_validate(fields)


def _run_row(
    run_id: str, result: EmotionResult, source: str, config_hash: str | None, input_ref: str | None
) -> tuple[Any, ...]:
    trajectory = result.trajectory
    calls = trajectory.calls if trajectory else []
    # Calls live in their own table; the stored result keeps everything else about the run.
    stored = result
    if trajectory is not None:
        stored = result.model_copy(update={"trajectory": trajectory.model_copy(update={"calls": []})})
    return (
        run_id, time.time(), source, config_hash, input_ref, result.query_id,
        trajectory.text if trajectory else None, result.label_set,
        json.dumps([i.sha256 for i in trajectory.images] if trajectory else []),
        "ok" if result.ok else "error", result.termination, result.label, result.valence, result.arousal,
        int(result.format_ok), trajectory.corrections if trajectory else 0, json.dumps(result.path), result.error,
        sum(c.latency_s for c in calls), sum(len(c.prompt_token_ids) for c in calls),
        sum(len(c.completion_token_ids) for c in calls), stored.model_dump_json(),
    )  # fmt: skip


def _call_row(run_id: str, index: int, call: LLMCall) -> tuple[Any, ...]:
    return (
        run_id, index, call.role, call.purpose, call.node, call.round, call.model_id, call.adapter,
        call.weight_version, json.dumps([m.model_dump(mode="json") for m in call.messages]),
        json.dumps(call.choices) if call.choices is not None else None, call.sampling.model_dump_json(), call.text,
        pack_ints(call.prompt_token_ids), pack_ints(call.completion_token_ids), pack_floats(call.logprobs),
        call.logprob_mode, call.finish_reason, call.latency_s,
        call.usage.prompt_tokens if call.usage else None, call.usage.completion_tokens if call.usage else None,
        json.dumps(call.parsed) if call.parsed is not None else None, call.error,
    )  # fmt: skip


def _call_from_row(row: sqlite3.Row) -> LLMCall:
    usage = None
    if row["prompt_tokens"] is not None:
        usage = {"prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"]}
    return LLMCall.model_validate(
        {
            "role": row["role"], "purpose": row["purpose"], "node": row["node"], "round": row["round"],
            "model_id": row["model_id"], "adapter": row["adapter"], "weight_version": row["weight_version"],
            "messages": json.loads(row["messages"]),
            "choices": json.loads(row["choices"]) if row["choices"] else None,
            "sampling": json.loads(row["sampling"]), "text": row["text"],
            "prompt_token_ids": unpack_ints(row["prompt_ids"]),
            "completion_token_ids": unpack_ints(row["completion_ids"]),
            "logprobs": unpack_floats(row["logprobs"]), "logprob_mode": row["logprob_mode"],
            "finish_reason": row["finish_reason"], "latency_s": row["latency_s"], "usage": usage,
            "parsed": json.loads(row["parsed"]) if row["parsed"] else None, "error": row["error"],
        }
    )  # fmt: skip


def _thumbnail(image: PreparedImage) -> bytes:
    picture = Image.open(io.BytesIO(image.png_bytes))
    picture.thumbnail(THUMBNAIL_SIZE, Image.Resampling.BILINEAR, reducing_gap=2.0)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()
