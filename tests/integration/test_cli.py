"""The `emo-r3` command line, run as a user would: real processes, real tiny models, kill -9 mid-batch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from PIL import Image
from repo import EMO_R3


def emo_r3(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EMO_R3, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_run_prints_label_affect_rationale_verdicts_and_path(tiny_config, bundled_images):
    done = emo_r3("run", str(bundled_images["coffee"]), "--text", "my morning", "--config", str(tiny_config))
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    label = lines["emotion"].split()[1]
    assert label in ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")
    assert {"valence", "rationale", "coherence", "consistency", "path"} <= set(lines)
    assert lines["path"].split()[1:4] == ["perceive", "→", "reason"]


def test_run_json_carries_the_trajectory(tiny_config, noise_image):
    done = emo_r3("run", str(noise_image), "--json", "--config", str(tiny_config), "--max-rounds", "0")
    result = json.loads(done.stdout)
    purposes = [call["purpose"] for call in result["trajectory"]["calls"]]
    assert purposes[0] == "perceive" and {"coherence", "consistency"} <= set(purposes)
    image = result["trajectory"]["calls"][0]["messages"][0]["content"][0]
    assert set(image["image"]) == {"sha256", "width", "height", "source"}  # images by hash, never pixels


def test_run_reports_bad_input_clearly(tiny_config, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    done = emo_r3("run", str(empty), "--config", str(tiny_config))
    assert done.returncode == 1 and "empty (0 bytes)" in done.stderr
    done = emo_r3("run", str(empty), "--label-set", "plutchik", "--config", str(tiny_config))
    assert done.returncode == 2 and "unknown label set" in done.stderr


def make_folder(folder: Path, count: int) -> set[str]:
    (folder / "nested").mkdir(parents=True)
    ids = set()
    for i in range(count):
        name = f"nested/img_{i:02d}.PNG" if i % 3 == 0 else f"img_{i:02d}.jpg"
        Image.new("RGB", (40 + i, 30), (i * 8 % 255, 80, 160)).save(
            folder / name, format="PNG" if "PNG" in name else "JPEG"
        )
        ids.add(name)
    (folder / "notes.txt").write_text("not an image, ignored")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return ids | {"broken.jpg"}


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batch_survives_kill_9_and_resumes_without_redoing(tiny_config, tmp_path):
    ids = make_folder(tmp_path / "images", 14)
    out = tmp_path / "results.jsonl"
    command = [*EMO_R3, "batch", str(tmp_path / "images"), "--out", str(out), "--config", str(tiny_config), "-j", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 4):
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = {record["id"] for record in read_records(out)}
    assert 4 <= len(before) < len(ids), "the kill should land mid-batch"

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr
    records = read_records(out)
    finished = [record["id"] for record in records]
    assert sorted(finished) == sorted(ids), "every item exactly once: nothing lost, nothing redone"
    assert f"{len(before)} already done" in resumed.stderr
    broken = next(r for r in records if r["id"] == "broken.jpg")
    assert broken["status"] == "error" and "not an image file" in broken["error"]
    assert all(r["status"] == "ok" and r["label"] for r in records if r["id"] != "broken.jpg")


def test_batch_jsonl_with_bad_lines_and_a_torn_last_line(tiny_config, tmp_path, bundled_images):
    shutil.copy(bundled_images["chelsea"], tmp_path / "cat.png")
    lines = [
        json.dumps({"id": "cat", "image": "cat.png", "text": "my cat"}),
        "{not json",
        json.dumps({"id": "no-image"}),
        json.dumps({"id": "cat-emotion6", "image": "cat.png", "label_set": "emotion6"}),
        json.dumps({"id": "huge-text", "image": "cat.png", "text": "x" * 10_000}),
    ]
    source = tmp_path / "queries.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "cat", "status": "ok", "lab')  # a record torn by a crash: must be redone, not kept
    done = emo_r3("batch", str(source), "--out", str(out), "--config", str(tiny_config))
    assert done.returncode == 0, done.stderr
    records = {r["id"]: r for r in read_records(out)}
    assert set(records) == {"cat", "line-2", "no-image", "cat-emotion6", "huge-text"}
    assert records["cat"]["status"] == "ok"
    assert records["cat-emotion6"]["label_set"] == "emotion6"
    assert records["cat-emotion6"]["label"] in ("anger", "disgust", "fear", "joy", "sadness", "surprise")
    assert "line 2" in records["line-2"]["error"]
    assert "over the limit" in records["huge-text"]["error"]
    assert records["no-image"]["status"] == "error"


def test_batch_refuses_a_results_file_of_another_kind(tiny_config, tmp_path, noise_image):
    out = tmp_path / "out.jsonl"
    foreign = '{"id": "x", "status": "ok", "label": "awe"}\n{"not": "a batch record"}\n'
    out.write_text(foreign)
    done = emo_r3("batch", str(noise_image.parent), "--out", str(out), "--config", str(tiny_config))
    assert done.returncode == 2 and "out.jsonl:2" in done.stderr
    assert out.read_text() == foreign  # nothing cut, nothing appended
