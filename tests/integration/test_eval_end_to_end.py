"""`emo-r3 eval` end to end, offline: the real graph with the tiny model over bundled public-domain images.

The labels below are PSEUDO-LABELS chosen for a smoke test of the pipeline; they are not ground truth and the
accuracy printed here says nothing about emotion recognition.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from repo import EMO_R3

PSEUDO_LABELS = {"astronaut": "excitement", "coffee": "contentment", "chelsea": "contentment",
                 "rocket": "awe", "grace_hopper": "awe"}  # fmt: skip


@pytest.fixture
def fi_folder(tmp_path, bundled_images) -> Path:
    """FI layout (a folder per emotion) of the bundled pictures, plus a corrupt file that must be skipped."""
    root = tmp_path / "fi"
    for name, label in PSEUDO_LABELS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(bundled_images[name], root / label / f"{name}{bundled_images[name].suffix.upper()}")
    (root / "fear").mkdir()
    (root / "fear" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    return root


def emo_r3(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EMO_R3, *args], capture_output=True, text=True, timeout=600, check=False)


def test_eval_writes_predictions_metrics_and_reports_and_resumes(fi_folder, tiny_config, tmp_path):
    out, traces = tmp_path / "eval-a", tmp_path / "traces.sqlite"
    done = emo_r3("eval", "--dataset", f"fi:{fi_folder}", "--config", str(tiny_config), "--out", str(out),
                  "--traces", str(traces))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "broken.jpg" in done.stderr  # reported, then skipped
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == len({p["id"] for p in predictions}) == len(PSEUDO_LABELS)
    assert all(p["id"].split("/")[0] == p["label"] for p in predictions)  # the folder is the (pseudo) label
    assert all(p["run_id"] and p["prediction"] for p in predictions)
    metrics = json.loads((out / "metrics.json").read_text())
    correct = sum(p["prediction"] == p["label"] for p in predictions)
    assert metrics["n"] == 5 and metrics["accuracy"] == pytest.approx(correct / 5)
    assert (out / "report.md").is_file() and (out / "report.html").is_file()

    from emo_r3.graphs.traces.store import TraceStore

    store = TraceStore(traces, readonly=True)
    assert {run.source for run in store.list_runs()} == {"eval"}
    assert store.get_run(predictions[0]["run_id"]).summary.query_id == predictions[0]["id"]

    again = emo_r3("eval", "--dataset", f"fi:{fi_folder}", "--config", str(tiny_config), "--out", str(out),
                   "--no-traces")  # fmt: skip
    assert again.returncode == 0 and "5 already done" in again.stderr
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 5


def test_paper_parity_and_compare(fi_folder, tiny_config, tmp_path):
    graph_out, parity_out = tmp_path / "graph", tmp_path / "parity"
    for out, extra in ((graph_out, []), (parity_out, ["--paper-parity"])):
        done = emo_r3("eval", "--dataset", f"fi:{fi_folder}", "--config", str(tiny_config), "--out", str(out),
                      "--no-traces", "--limit", "4", *extra)  # fmt: skip
        assert done.returncode == 0, done.stderr
    parity = [json.loads(line) for line in (parity_out / "predictions.jsonl").read_text().splitlines()]
    assert len(parity) == 4 and json.loads((parity_out / "meta.json").read_text())["paper_parity"] is True
    compared = emo_r3("eval", "compare", str(graph_out), str(parity_out), "--out", str(tmp_path / "cmp"))
    assert compared.returncode == 0, compared.stderr
    assert "accuracy" in compared.stdout and "McNemar" in compared.stdout
    assert (tmp_path / "cmp" / "comparison.html").is_file()
