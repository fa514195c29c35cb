"""The trace store in one process: round trips, filters and paging, training rows, schema versions, bad files."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest
from scripted_trace_runs import scripted_graph

from emo_r3.graphs import EmotionQuery
from emo_r3.graphs.traces.records import RunFilter, TrainingRowRecord
from emo_r3.graphs.traces.schema import SCHEMA_VERSION
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
    with pytest.raises(TraceStoreError, match="not a readable"):
        TraceStore(garbage)
    with pytest.raises(TraceStoreError, match="no trace store"):
        TraceStore(tmp_path / "absent.sqlite", readonly=True)
