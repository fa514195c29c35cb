"""The trace store in one process: round trips, filters and paging, training rows, schema versions, bad files,
damaged and foreign files, a full disk (a real SQLITE_FULL, from a store capped with `max_bytes`)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from damaged_stores import DAMAGES, drop_side_files, garbage_page, good_store, other_application, random_bytes
from scripted_trace_runs import scripted_graph

from emo_r3.graphs import EmotionQuery, EmotionResult
from emo_r3.graphs.traces import store as store_module
from emo_r3.graphs.traces.recorder import TraceRecorder
from emo_r3.graphs.traces.records import RunFilter, TrainingRowRecord
from emo_r3.graphs.traces.schema import MIGRATIONS, SCHEMA_VERSION
from emo_r3.graphs.traces.store import TraceStore, TraceStoreError


def test_a_recorded_run_reads_back_exactly(tmp_path, noise_image):
    store = TraceStore(tmp_path / "t.sqlite")
    result = scripted_graph(store).run(EmotionQuery(images=[noise_image], text="morning"))
    detail = store.get_run(result.trajectory.id[:8])
    # every call, token id and logprob, parsed output and verdict (images compare by hash: pixels stay out)
    assert detail.result.model_dump() == result.model_dump()
    assert detail.summary.path == ["perceive", "reason", "reflect", "finalize"]
    assert detail.summary.input_ref == str(noise_image)
    thumbnail = store.thumbnail(result.trajectory.images[0].sha256)
    assert thumbnail and thumbnail[:2] == b"\xff\xd8"  # a JPEG
    store.record_rewards(detail.summary.id, {"accuracy": 1.0, "format": 1.0})
    store.record_rewards(detail.summary.id, {"verdicts_right": 0.5}, role="reflector")
    assert store.get_run(detail.summary.id).rewards == {
        "": {"accuracy": 1.0, "format": 1.0},
        "reflector": {"verdicts_right": 0.5},
    }


def test_bad_input_is_recorded_too(tmp_path):
    store = TraceStore(tmp_path / "t.sqlite")
    missing = tmp_path / "gone.jpg"
    result = scripted_graph(store).run(EmotionQuery(images=[missing]))
    [run] = store.list_runs()
    assert run.status == "error" and run.termination == "error" and "no such file" in run.error
    assert result.error == run.error


def test_filters_paging_and_prefixes(tmp_path, noise_image):
    store = TraceStore(tmp_path / "t.sqlite")
    graph = scripted_graph(store, max_rounds=1)
    queries = [EmotionQuery(images=[noise_image], text="storm" if i % 3 == 0 else "calm") for i in range(9)]
    asyncio.run(graph.abatch(queries, max_concurrency=3))
    assert store.count_runs() == 9
    corrected = store.list_runs(RunFilter(termination="max_rounds"))
    assert len(corrected) == 3 and all(r.rounds == 1 for r in corrected)  # coherence failed, one correction
    assert store.count_runs(RunFilter(label="contentment", status="ok")) == 9
    assert store.count_runs(RunFilter(since=time.time() + 60)) == 0
    pages = [store.list_runs(limit=4, offset=offset) for offset in (0, 4, 8)]
    ids = [run.id for page in pages for run in page]
    assert len(ids) == len(set(ids)) == 9
    times = [run.created_at for run in store.list_runs()]
    assert times == sorted(times, reverse=True)
    with pytest.raises(KeyError, match="no run"):
        store.get_run("zzzz")
    with pytest.raises(KeyError, match="more than one"):
        store.find_run("")


def test_training_steps_link_rows_to_calls(tmp_path, noise_image):
    store = TraceStore(tmp_path / "t.sqlite")
    result = scripted_graph(store).run(EmotionQuery(images=[noise_image]))
    rows = [
        TrainingRowRecord(
            run_id=result.trajectory.id, call_idx=1, policy="reasoner", advantage=0.7, values={"loss": -0.2}
        )
    ]
    store.record_training_step("smoke", 3, {"reward_mean": 0.5, "loss": 0.1}, rows)
    step = store.get_training_step("smoke", 3)
    assert step.rows == rows and step.metrics["reward_mean"] == 0.5
    assert [s.step for s in store.list_training_steps()] == [3]
    call = store.get_run(step.rows[0].run_id).result.trajectory.calls[step.rows[0].call_idx]
    assert call.purpose == "reason"


def test_schema_version_and_unreadable_files(tmp_path):
    path = tmp_path / "t.sqlite"
    TraceStore(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(TraceStoreError, match="newer than this EMO-R3"):
        TraceStore(path)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(TraceStoreError, match="not an SQLite database"):
        TraceStore(garbage)
    with pytest.raises(TraceStoreError, match="no trace store"):
        TraceStore(tmp_path / "absent.sqlite", readonly=True)


# -- damaged, foreign, incomplete and older stores ---------------------------------------------------------------


def read_everything(store: TraceStore) -> None:
    """What `traces list/show/export` and the viewer read: the list, every run with its calls, the training steps."""
    store.count_runs()
    for summary in store.list_runs(limit=500):
        store.get_run(summary.id)
    store.list_training_steps()
    store.get_training_step("smoke", 1)


@pytest.mark.parametrize("case", DAMAGES, ids=lambda case: case.name)
def test_damaged_and_foreign_stores_fail_with_a_clear_error(tmp_path, noise_image, case):
    path = tmp_path / "traces.sqlite"
    good_store(path, noise_image)
    case.damage(path)
    drop_side_files(path)
    if not case.opens:
        with pytest.raises(TraceStoreError, match=case.says):
            TraceStore(path, readonly=True)
        return
    with TraceStore(path, readonly=True) as store, pytest.raises(TraceStoreError, match=case.says) as caught:
        read_everything(store)
    assert str(path) in str(caught.value) and len(str(caught.value)) < 1000


@pytest.mark.parametrize("damage", [random_bytes, other_application], ids=["random bytes", "another app"])
def test_a_writer_leaves_a_foreign_file_untouched(tmp_path, noise_image, damage):
    path = tmp_path / "traces.sqlite"
    good_store(path, noise_image)
    damage(path)
    before = path.read_bytes()
    with pytest.raises(TraceStoreError, match="not an EMO-R3 trace store"):
        TraceStore(path)
    assert path.read_bytes() == before  # no EMO-R3 tables added, not switched to WAL
    assert not Path(f"{path}-wal").exists()


def test_a_zero_byte_file_becomes_a_store_when_written_to(tmp_path, noise_image):
    path = tmp_path / "traces.sqlite"
    path.touch()
    with pytest.raises(TraceStoreError, match="empty, not a trace store yet"):
        TraceStore(path, readonly=True)
    store = TraceStore(path)
    scripted_graph(store).run(EmotionQuery(images=[noise_image]))
    assert TraceStore(path, readonly=True).count_runs() == 1


def test_a_write_into_a_damaged_store_says_it_is_damaged(tmp_path, noise_image):
    path = tmp_path / "traces.sqlite"
    good_store(path, noise_image)
    garbage_page(path)
    graph = scripted_graph(TraceStore(path))
    result = graph.run(EmotionQuery(images=[noise_image]))
    assert result.ok  # the answer still comes back
    assert graph.traces.failures == 1 and "is damaged: SQLite's quick_check reports" in graph.traces.last_error


def altered_store(path: Path, image: Path, *statements: str) -> Path:
    """A good store on disk, then changed by raw SQL (as another program or an older EMO-R3 would leave it)."""
    good_store(path, image)
    with sqlite3.connect(path) as db:
        for statement in statements:
            db.execute(statement)
    db.close()
    return path


def test_a_store_missing_part_of_its_schema_says_what_is_missing(tmp_path, noise_image):
    path = altered_store(
        tmp_path / "traces.sqlite", noise_image, "DROP TABLE training_rows", "ALTER TABLE runs DROP COLUMN error"
    )
    for readonly in (True, False):
        with pytest.raises(TraceStoreError, match="not a complete EMO-R3 trace store") as caught:
            TraceStore(path, readonly=readonly)
        assert "table training_rows" in str(caught.value) and "column runs.error" in str(caught.value)


def test_an_older_schema_read_only_says_how_to_migrate(tmp_path, noise_image, monkeypatch):
    path = tmp_path / "traces.sqlite"
    good_store(path, noise_image)
    # This EMO-R3 gets a second migration: the store on disk is now one schema version behind.
    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, "ALTER TABLE runs ADD COLUMN note TEXT"])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(TraceStoreError, match=rf"schema v{SCHEMA_VERSION}, older than this EMO-R3") as caught:
        TraceStore(path, readonly=True)
    assert "open it once for writing to migrate it" in str(caught.value)
    TraceStore(path).close()  # a writer migrates it
    with TraceStore(path, readonly=True) as store:
        assert store.count_runs() == 3
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    db.close()


def test_queue_and_generation_times_read_back_apart(tmp_path, noise_image):
    store = TraceStore(tmp_path / "t.sqlite")
    result = scripted_graph(TraceStore(tmp_path / "first.sqlite")).run(EmotionQuery(images=[noise_image]))
    for index, call in enumerate(result.trajectory.calls):
        call.latency_s, call.queue_s = 0.5 + index, 0.125 * index
    run_id = store.record_run(result, source="run")
    calls = store.get_run(run_id).result.trajectory.calls
    assert [(c.latency_s, c.queue_s) for c in calls] == [(c.latency_s, c.queue_s) for c in result.trajectory.calls]


def test_a_v1_store_gains_queue_times_on_migration(tmp_path, noise_image):
    """Stores written before in-process batching (v1: no `calls.queue_s`) migrate in place; old calls read 0."""
    drop = "ALTER TABLE calls DROP COLUMN queue_s"
    path = altered_store(tmp_path / "traces.sqlite", noise_image, drop, "PRAGMA user_version = 1")
    with TraceStore(path) as store:
        [run, *_] = store.list_runs()
        calls = store.get_run(run.id).result.trajectory.calls
        assert calls and {call.queue_s for call in calls} == {0.0}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    db.close()


# -- a full disk ----------------------------------------------------------------------------------------------------

FULL_AT = 1024 * 1024  # bytes: room for a handful of runs with long texts


@dataclass
class FullStore:
    store: TraceStore
    recorder: TraceRecorder
    stored: list[str]  # runs written before the store filled up
    lost: EmotionResult  # the run that did not fit
    query: EmotionQuery


@pytest.fixture
def full_store(tmp_path, noise_image) -> FullStore:
    """A store capped by `max_bytes`, filled by graph runs until one no longer fits (a real SQLITE_FULL)."""
    store = TraceStore(tmp_path / "traces.sqlite", max_bytes=FULL_AT)
    graph = scripted_graph(store)
    stored = []
    for i in range(100):
        query = EmotionQuery(images=[noise_image], text=f"run {i}: " + "a long caption " * 200)
        result = graph.run(query)
        if graph.traces.failures:
            assert result.ok  # the run itself still answers
            return FullStore(store, graph.traces, stored, result, query)
        stored.append(result.trajectory.id)
    raise AssertionError(f"{FULL_AT} bytes never filled up")


def assert_intact(path: Path, stored: list[str]) -> None:
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with TraceStore(path, readonly=True) as reader:
        assert sorted(run.id for run in reader.list_runs(limit=500)) == sorted(stored)
        assert all(len(reader.get_run(run_id).result.trajectory.calls) == 4 for run_id in stored)


def test_a_full_store_names_the_real_cause_and_keeps_every_earlier_run(full_store):
    error = full_store.recorder.last_error
    assert full_store.recorder.failures == 1 and len(full_store.stored) >= 2
    assert "database or disk is full" in error and "free some space" in error, error
    assert str(full_store.store.path) in error and "rollback" not in error
    assert not full_store.store.has_run(full_store.lost.trajectory.id)  # nothing half-written
    assert all(full_store.store.has_run(run_id) for run_id in full_store.stored)  # the same connection still reads
    assert_intact(full_store.store.path, full_store.stored)


def test_the_recorder_says_whether_a_run_was_stored(full_store, tmp_path):
    recorder, result, query = full_store.recorder, full_store.lost, full_store.query
    assert asyncio.run(recorder.record(result, query=query, images=())) is None  # full: not stored, not raised
    assert recorder.failures == 2 and "database or disk is full" in recorder.last_error
    elsewhere = TraceRecorder(TraceStore(tmp_path / "roomy.sqlite"))
    assert asyncio.run(elsewhere.record(result, query=query, images=())) == result.trajectory.id
    assert elsewhere.failures == 0 and elsewhere.last_error is None
    assert asyncio.run(TraceRecorder(None).record(result, query=query, images=())) is None


def test_a_failing_exporter_does_not_stop_the_store(tmp_path, noise_image):
    class BrokenExporter:
        def export(self, *args, **kwargs):
            raise RuntimeError("collector down")

        def shutdown(self):
            pass

    store = TraceStore(tmp_path / "traces.sqlite")
    graph = scripted_graph(store)
    graph.traces.exporter = BrokenExporter()
    result = graph.run(EmotionQuery(images=[noise_image]))
    assert result.ok and store.has_run(result.trajectory.id) and graph.traces.failures == 0


WRITES = {
    "rewards": lambda store, run_id: store.record_rewards(run_id, {f"term {i} " * 20: i / 7 for i in range(3000)}),
    "training step": lambda store, run_id: store.record_training_step(
        "smoke", 1, {"loss": 0.5}, [TrainingRowRecord(run_id=run_id, call_idx=i, policy="reasoner", advantage=0.1,
                                                      values={f"value {j}": j for j in range(40)}) for i in range(500)]
    ),
}  # fmt: skip


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
def test_every_write_path_on_a_full_store_names_the_real_cause(full_store, write):
    store, run_id = full_store.store, full_store.stored[0]
    with pytest.raises(TraceStoreError, match="database or disk is full") as caught:
        write(store, run_id)
    assert "rollback" not in str(caught.value) and str(store.path) in str(caught.value)
    assert store.get_run(run_id).rewards == {} and store.list_training_steps() == []  # none of it written
    assert_intact(store.path, full_store.stored)


def test_creating_the_schema_on_a_full_disk_names_the_real_cause(tmp_path):
    path = tmp_path / "traces.sqlite"
    with pytest.raises(TraceStoreError, match="database or disk is full") as caught:
        TraceStore(path, max_bytes=4096)  # room for one page: the schema needs more
    assert "rollback" not in str(caught.value)
    with TraceStore(path) as store:  # nothing half-created: with room, the same file becomes a store
        assert store.count_runs() == 0
