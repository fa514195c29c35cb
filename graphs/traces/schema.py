"""The trace store's SQLite schema, as a list of migrations: the schema version is the number applied."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence

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
    # v2: time a call waited for a batch slot (in-process batching), apart from its generation time
    """
    ALTER TABLE calls ADD COLUMN queue_s REAL NOT NULL DEFAULT 0;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def apply_migrations(db: sqlite3.Connection, migrations: Sequence[str]) -> None:
    """Run each migration script statement by statement (the caller holds the transaction)."""
    for script in migrations:
        for statement in filter(str.strip, script.split(";")):
            db.execute(statement)


def expected_tables(migrations: Sequence[str]) -> dict[str, frozenset[str]]:
    """Table -> column names that a store at schema version `len(migrations)` has (worked out in memory, once)."""
    return _expected_tables(tuple(migrations))


@functools.cache
def _expected_tables(migrations: tuple[str, ...]) -> dict[str, frozenset[str]]:
    db = sqlite3.connect(":memory:")
    try:
        apply_migrations(db, migrations)
        return {table: table_columns(db, table) for table in table_names(db)}
    finally:
        db.close()


def table_names(db: sqlite3.Connection) -> list[str]:
    """The database's tables, sorted, SQLite's own left out."""
    rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()
    return [row[0] for row in rows if not row[0].lower().startswith("sqlite_")]


def table_columns(db: sqlite3.Connection, table: str) -> frozenset[str]:
    return frozenset(row[0] for row in db.execute("SELECT name FROM pragma_table_info(?)", (table,)))
