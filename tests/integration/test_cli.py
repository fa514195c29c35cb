"""The `emo-r3` command line, run as a user would: real processes, real tiny models, kill -9 mid-batch, a file-size
limit standing in for a full disk, two batches on one results file, output paths that cannot be written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image
from process_limits import file_size_limit
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
    done = emo_r3("run", str(empty), "--config", str(tiny_config), "--traces", str(tmp_path / "traces.sqlite"))
    assert done.returncode == 2 and "empty (0 bytes)" in done.stderr
    assert not (tmp_path / "traces.sqlite").exists(), "refused before anything was loaded or recorded"
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
    assert resumed.returncode == 1, resumed.stderr  # broken.jpg's result is an error (ExitCode.FAILED)
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
    done = emo_r3("batch", str(source), "--out", str(out), "--config", str(tiny_config), "--json")
    assert done.returncode == 1, done.stderr  # three lines failed; the others ran
    assert json.loads(done.stdout) == {
        "total": 5, "skipped": 0, "duplicates": 0, "ok": 2, "errors": 3, "errors_before": 0, "failed": 3,
        "results": str(out),
    }  # fmt: skip
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


def batch_command(images: Path, out: Path, tiny_config: Path, *extra: str) -> list[str]:
    return [*EMO_R3, "batch", str(images), "--out", str(out), "--config", str(tiny_config), "--no-traces", *extra]


def test_batch_on_a_full_disk_stops_cleanly_keeps_whole_records_and_resumes(tiny_config, tmp_path):
    ids = make_folder(tmp_path / "images", 5)
    out = tmp_path / "results.jsonl"
    command = batch_command(tmp_path / "images", out, tiny_config, "-j", "2")

    # Records are about 400 bytes: the limit lands inside the third or so, which is written short, then refused.
    full = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False,
                          preexec_fn=file_size_limit(1000))  # fmt: skip

    assert full.returncode == 3, full.stderr  # ExitCode.STOPPED
    assert "Traceback" not in full.stderr
    assert out.read_bytes().endswith(b"\n"), "only complete lines are left"
    kept = read_records(out)
    assert 1 <= len(kept) < len(ids)
    assert (
        f"error: could not write {out}: File too large; {len(kept)} results kept; raise the file-size limit "
        "(ulimit -f) or free space and run the same command again to resume"
    ) in full.stderr

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 1, resumed.stderr  # broken.jpg
    assert f"{len(kept)} already done" in resumed.stderr
    records = read_records(out)
    assert records[: len(kept)] == kept
    assert sorted(record["id"] for record in records) == sorted(ids), "every item once: nothing lost or redone"


def test_a_second_batch_on_the_same_results_file_is_refused_before_any_work(tiny_config, tmp_path):
    ids = make_folder(tmp_path / "images", 5)
    out = tmp_path / "results.jsonl"
    command = batch_command(tmp_path / "images", out, tiny_config, "-j", "1")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and (not out.exists() or not out.read_text().count("\n")):
            assert first.poll() is None, first.stderr.read().decode()
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGSTOP)  # mid-batch and holding its lock, whatever the machine's speed

        second = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)

        assert second.returncode == 2, second.stderr
        assert f"error: {out} is being written by another running command; wait for it to finish" in second.stderr
        assert "Traceback" not in second.stderr and "ok," not in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 1, stderr.decode()  # broken.jpg
    assert sorted(record["id"] for record in read_records(out)) == sorted(ids), "each item once: the second ran none"


BAD_OUTS = {
    "a folder": (lambda tmp: (tmp / "out").mkdir(), "out", "{out} is a folder; give a file name instead"),
    "under a file": (lambda tmp: (tmp / "f.txt").write_text("x"), "f.txt/results.jsonl", "f.txt is a file, not a"),
    "a link loop": (lambda tmp: (tmp / "loop").symlink_to(tmp / "loop"), "loop", "(Too many levels of symbolic"),
}


@pytest.mark.parametrize(("make", "relative", "says"), BAD_OUTS.values(), ids=BAD_OUTS.keys())
def test_batch_refuses_an_out_that_cannot_be_written_before_any_work(tiny_config, noise_image, tmp_path, make,
                                                                      relative, says):  # fmt: skip
    make(tmp_path)
    out = tmp_path / relative
    before = sorted(tmp_path.rglob("*"))

    done = subprocess.run(batch_command(noise_image.parent, out, tiny_config), capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip

    assert done.returncode == 2, done.stderr
    assert says.format(out=out) in done.stderr and "Traceback" not in done.stderr
    assert sorted(tmp_path.rglob("*")) == before, "nothing ran, nothing was written"
