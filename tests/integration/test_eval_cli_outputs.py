"""`emo-r3 eval` and its predictions file as a user meets them: a file-size limit standing in for a full disk (while
predicting, then while writing the report), a second eval into the same folder, and output folders that cannot be
written. Real processes, the tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image
from process_limits import file_size_limit
from repo import EMO_R3

LABELS = ("amusement", "awe", "contentment", "fear", "sadness", "anger")


@pytest.fixture
def fi_folder(tmp_path: Path) -> Path:
    """FI layout (a folder per emotion), one small picture in each."""
    root = tmp_path / "fi"
    for index, label in enumerate(LABELS):
        (root / label).mkdir(parents=True)
        Image.new("RGB", (48 + index, 32), (index * 40, 90, 150)).save(root / label / f"{label}_{index}.png")
    return root


def eval_command(fi_folder: Path, out: Path, tiny_config: Path, *extra: str) -> list[str]:
    spec = f"fi:{fi_folder}"
    return [*EMO_R3, "eval", "--dataset", spec, "--config", str(tiny_config), "--out", str(out), "--no-traces", *extra]


def run(command: list[str], **options) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, **options)


def predictions(out: Path) -> list[dict]:
    data = (out / "predictions.jsonl").read_bytes()
    assert data == b"" or data.endswith(b"\n"), "only complete lines are left"
    return [json.loads(line) for line in data.splitlines()]


def test_eval_on_a_full_disk_stops_cleanly_keeps_every_whole_prediction_and_resumes(fi_folder, tiny_config, tmp_path):
    out = tmp_path / "eval"
    command = eval_command(fi_folder, out, tiny_config, "-j", "2")

    full = run(command, preexec_fn=file_size_limit(1200))

    assert full.returncode == 3, full.stderr  # ExitCode.STOPPED
    assert "Traceback" not in full.stderr
    kept = predictions(out)
    assert 1 <= len(kept) < len(LABELS)
    assert (
        f"error: could not write {out / 'predictions.jsonl'}: File too large; {len(kept)} results kept; raise the "
        "file-size limit (ulimit -f) or free space and run the same command again to resume"
    ) in full.stderr
    assert not (out / "metrics.json").exists(), "no metrics from a run that stopped part-way"

    # Room for every prediction (under 3 kB) but not for the self-contained HTML report.
    no_report = run(command, preexec_fn=file_size_limit(6000))
    assert no_report.returncode == 3, no_report.stderr
    assert f"({len(kept)} already done)" in no_report.stderr and "Traceback" not in no_report.stderr
    assert (
        f"error: could not write the report into {out}: File too large; every prediction is kept; raise the "
        "file-size limit (ulimit -f) or free space and run the same command again (nothing is evaluated twice)"
    ) in no_report.stderr
    records = predictions(out)
    assert records[: len(kept)] == kept
    assert sorted(record["id"].split("/")[0] for record in records) == sorted(LABELS), "each item once"

    resumed = run(command)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({len(LABELS)} already done)" in resumed.stderr
    assert predictions(out) == records
    assert json.loads((out / "metrics.json").read_text())["n"] == len(LABELS)
    assert (out / "report.html").read_text().rstrip().endswith("</html>")


def test_a_second_eval_into_the_same_folder_is_refused_before_any_work(fi_folder, tiny_config, tmp_path):
    out = tmp_path / "eval"
    command = eval_command(fi_folder, out, tiny_config, "-j", "1")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    path = out / "predictions.jsonl"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and (not path.exists() or not path.read_text().count("\n")):
            assert first.poll() is None, first.stderr.read().decode()
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGSTOP)  # mid-eval and holding its lock, whatever the machine's speed

        second = run(command)

        assert second.returncode == 2, second.stderr
        assert f"error: {path} is being written by another running command; wait for it to finish" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr.decode()
    assert len(predictions(out)) == len(LABELS), "each item once: the second ran none"


BAD_OUTS = {
    "a file": (lambda tmp: (tmp / "eval").write_text("x"), "eval", "{out} is a file, not a folder; give a folder"),
    "under a file": (lambda tmp: (tmp / "f.txt").write_text("x"), "f.txt/eval", "f.txt is a file, not a folder"),
    "predictions a folder": (
        lambda tmp: (tmp / "eval" / "predictions.jsonl").mkdir(parents=True),
        "eval",
        "{out}/predictions.jsonl is a folder; give a file name instead",
    ),
}


@pytest.mark.parametrize(("make", "relative", "says"), BAD_OUTS.values(), ids=BAD_OUTS.keys())
def test_eval_refuses_an_out_that_cannot_be_written_before_any_work(fi_folder, tiny_config, tmp_path, make,
                                                                     relative, says):  # fmt: skip
    make(tmp_path)
    out = tmp_path / relative
    before = sorted(tmp_path.rglob("*"))

    done = run(eval_command(fi_folder, out, tiny_config))

    assert done.returncode == 2, done.stderr
    assert says.format(out=out) in done.stderr and "Traceback" not in done.stderr
    assert sorted(tmp_path.rglob("*")) == before, "nothing ran, nothing was written"
