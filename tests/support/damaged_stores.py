"""Trace stores broken the ways real files break, for the store's and the viewer's tests: each `damage` function
takes a path holding a good, closed store (see `good_store`) and breaks it in place. Raw `sqlite3` and raw bytes
only, so nothing here goes through the code under test."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scripted_trace_runs import scripted_graph

from emo_r3.graphs import EmotionQuery
from emo_r3.graphs.traces.store import TraceStore


def good_store(path: Path, image: Path, runs: int = 3) -> list[str]:
    """A closed store with `runs` scripted runs and one training step; returns the run ids."""
    store = TraceStore(path)
    graph = scripted_graph(store)
    ids = [graph.run(EmotionQuery(images=[image], text=f"run {i}")).trajectory.id for i in range(runs)]
    store.record_training_step("smoke", 1, {"loss": 0.5})
    store.close()
    drop_side_files(path)
    return ids


def drop_side_files(path: Path) -> None:
    """The WAL and shared-memory files, so the next open sees only the main file as the damage left it."""
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(7).randbytes(64 * 1024))


def other_application(path: Path) -> None:
    """Another program's SQLite database (with its own user_version, as many set one)."""
    path.unlink()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER, total REAL)")
        db.execute("INSERT INTO customers VALUES (1, 'Ada')")
        db.execute("PRAGMA user_version = 3")
    db.close()


def garbage_page(path: Path) -> None:
    """The root page of the runs table overwritten with random bytes (the schema on page 1 stays intact)."""
    with sqlite3.connect(path) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
    db.close()
    data = bytearray(path.read_bytes())
    data[(root - 1) * page_size : root * page_size] = random.Random(11).randbytes(page_size)
    path.write_bytes(bytes(data))


def invalid_utf8_label(path: Path) -> None:
    """A run list column (label) holding bytes that are not UTF-8, stored as TEXT."""
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET label = CAST(X'c3ff41fe' AS TEXT) WHERE rowid = (SELECT min(rowid) FROM runs)")
    db.close()


def invalid_utf8_call_text(path: Path) -> None:
    """A call's answer text holding bytes that are not UTF-8: the run list reads fine, the run page does not."""
    with sqlite3.connect(path) as db:
        db.execute("UPDATE calls SET text = CAST(X'80808080' AS TEXT)")
    db.close()


@dataclass(frozen=True)
class Damage:
    name: str
    damage: Callable[[Path], None]
    says: str  # a regular expression the TraceStoreError's message matches
    opens: bool  # whether a read-only open still succeeds (the schema is intact): the reads fail instead


DAMAGES = [
    Damage("zero bytes", zero_bytes, "empty, not a trace store yet", opens=False),
    Damage("random bytes", random_bytes, "not an EMO-R3 trace store: it is not an SQLite database", opens=False),
    Damage(
        "another application's database",
        other_application,
        r"not an EMO-R3 trace store \(it holds tables customers, orders\)",
        opens=False,
    ),
    Damage("a page of garbage", garbage_page, r"is damaged: SQLite's quick_check reports", opens=True),
    Damage("invalid UTF-8 in the run list", invalid_utf8_label, "holds text that is not valid UTF-8", opens=True),
    Damage("invalid UTF-8 in a call", invalid_utf8_call_text, "holds text that is not valid UTF-8", opens=True),
]
