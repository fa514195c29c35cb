"""benchmarks/inprocess_batching.py runs, and its batched side generates exactly the serialised side's tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from repo import ROOT


def test_batched_and_serialised_runs_generate_the_same_tokens(tmp_path: Path) -> None:
    out = tmp_path / "inprocess_batching.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "inprocess_batching.py"), "--model", "offline:tiny-idefics3"]
    command += ["--n", "1", "4", "--max-tokens", "6", "--group-size", "3", "--prompts", "2", "--json", str(out)]
    subprocess.run(command, check=True, cwd=ROOT, timeout=300, capture_output=True)
    report = json.loads(out.read_text())
    rows = [report["graph_runs"]["1"], report["graph_runs"]["4"], report["rollout_step"]]
    assert [row["runs"] for row in rows] == [1, 4, 6]
    for row in rows:
        assert row["same_tokens"] is True
        assert row["generated_tokens"] > 0 and row["speedup"] > 0
        for side in ("serialised_forward_s", "batched_forward_s"):
            assert row[side]["prefill_s"] > 0 and row[side]["decode_s"] > 0
            assert row[side]["prefill_s"] + row[side]["decode_s"] < row[side.replace("forward_", "")]
