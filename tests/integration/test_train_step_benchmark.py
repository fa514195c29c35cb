"""benchmarks/train_step.py runs on CPU, and ours trains on exactly the baseline's tokens (same loss)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from repo import ROOT


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("train_step") / "train_step.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--preset", "tiny", "--device", "cpu"]
    command += ["--rows", "4", "--seq-len", "64", "--iters", "1", "--warmup", "0", "--json", str(out)]
    # Every path of ours: per-row attention, transformers' dense block mask, one row per forward with checkpointing.
    command += ["--variants", "16384", "4096:mask", "rows:ckpt"]
    # One thread: on a two-core machine shared with other jobs, more threads only contend.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, cwd=ROOT, env=env, timeout=120, capture_output=True)
    return json.loads(out.read_text())


@pytest.mark.parametrize("shape", ["full", "ragged"])
def test_both_methods_report_throughput(report: dict, shape: str) -> None:
    methods = report["shapes"][shape]["methods"]
    assert len(methods) == 4
    assert all(method["tokens_per_s"] > 0 for method in methods.values())
    assert report["shapes"][shape]["ratio"] > 0


@pytest.mark.parametrize("shape", ["full", "ragged"])
def test_ours_and_baseline_compute_the_same_loss(report: dict, shape: str) -> None:
    baseline, *ours = report["shapes"][shape]["methods"].values()
    assert ours
    for method in ours:
        assert method["loss"] == pytest.approx(baseline["loss"], abs=1e-5)


def test_ragged_rows_are_fewer_tokens_than_the_padded_batch(report: dict) -> None:
    ragged = report["shapes"]["ragged"]
    assert ragged["real_tokens"] < ragged["padded_tokens"] == report["rows"] * report["seq_len"]
