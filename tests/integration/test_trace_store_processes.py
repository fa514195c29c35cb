"""The trace store under real processes: concurrent writer processes, kill -9 mid-batch, and the traces CLI."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import time

from PIL import Image
from repo import EMO_R3
from scripted_trace_runs import write_runs

from emo_r3.graphs.traces.store import TraceStore


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
