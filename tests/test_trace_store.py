"""The trace store: round trips, filters, schema versions, concurrent writers, kill -9, and the traces CLI."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from PIL import Image
from scripted_trace_runs import scripted_graph, write_runs

from graphs import EmotionQuery
from graphs.trace_store import SCHEMA_VERSION, RunFilter, TraceStore, TraceStoreError, TrainingRowRecord


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


def test_concurrent_writer_processes(tmp_path, noise_image):
    path = str(tmp_path / "t.sqlite")
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=write_runs, args=(path, str(noise_image), 25)) for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    store = TraceStore(path, readonly=True)
    assert store.count_runs() == 100
    assert all(len(store.get_run(run.id).result.trajectory.calls) == 4 for run in store.list_runs(limit=10))


EMO_R3 = [sys.executable, "-m", "graphs.cli"]


def test_kill_9_mid_batch_leaves_a_readable_store_with_every_finished_run(tiny_config, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(16):
        Image.new("RGB", (32 + i, 32), (i * 15, 90, 200)).save(folder / f"{i:02d}.png")
    traces, out = tmp_path / "traces.sqlite", tmp_path / "results.jsonl"
    command = [*EMO_R3, "batch", str(folder), "--out", str(out), "--config", str(tiny_config), "-j", "4",
               "--traces", str(traces)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 5):
        assert process.poll() is None, "the batch exited before it could be killed"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    with sqlite3.connect(traces) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = TraceStore(traces, readonly=True)
    finished = [json.loads(line)["run_id"] for line in out.read_text().splitlines()]
    assert len(finished) >= 5
    for run_id in finished:  # a result line is written after its trace: every finished run is in the store
        assert len(store.get_run(run_id).result.trajectory.calls) >= 4


def test_traces_cli_list_show_diff_export(tiny_config, tmp_path, bundled_images):
    traces = tmp_path / "traces.sqlite"
    for name, text in (("coffee", "my breakfast"), ("rocket", "<b>launch</b> day")):
        done = subprocess.run([*EMO_R3, "run", str(bundled_images[name]), "--text", text, "--config", str(tiny_config),
                               "--traces", str(traces)], capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "emo-r3 traces show" in done.stderr
    cli = lambda *args: subprocess.run([*EMO_R3, "traces", *args, "--traces", str(traces)],  # noqa: E731
                                       capture_output=True, text=True, check=False)  # fmt: skip
    listing = cli("list")
    assert listing.returncode == 0 and "2 of 2 runs" in listing.stderr
    ids = [run.id for run in TraceStore(traces, readonly=True).list_runs()]
    shown = cli("show", ids[0][:10])
    assert (
        "perceive (round 0)" in shown.stdout and "reasoner/reason" in shown.stdout and "<b>launch</b>" in shown.stdout
    )
    diffed = cli("diff", ids[0], ids[1])
    assert diffed.returncode == 0 and "input" in diffed.stdout and "call #0" in diffed.stdout
    exported = cli("export")
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(lines) == 2 and lines[0]["result"]["trajectory"]["calls"][0]["completion_token_ids"]
    assert cli("show", "nope").returncode == 2
    assert "is not an ISO date" in cli("list", "--since", "yesterday").stderr
