"""Durable execution with LangGraph's SQLite checkpointer, as a user gets it: a process killed (kill -9) between
nodes, and a second process that resumes the thread and makes only the calls that were missing."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys

from repo import SUPPORT

SCRIPT = SUPPORT / "checkpointed_run.py"


def test_a_run_killed_after_perceive_resumes_from_its_checkpoint_without_redoing_calls(noise_image, tmp_path):
    db, calls = tmp_path / "checkpoints.sqlite", tmp_path / "calls.log"
    command = [sys.executable, str(SCRIPT), str(db), str(noise_image), str(calls)]

    killed = subprocess.run([*command, "--die-at", "reason"], capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert calls.read_text().split() == ["perceive"]
    with sqlite3.connect(db) as connection:  # what survived the kill: the checkpoints up to the finished perceive
        assert connection.execute("SELECT count(*) FROM checkpoints").fetchone()[0] >= 2

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=120, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout) == {
        "ok": True, "path": ["perceive", "reason", "reflect", "finalize"], "calls": 4,
    }  # fmt: skip
    assert calls.read_text().split() == ["perceive", "reason", "coherence", "consistency"], "perceive ran once"
    assert "unregistered" not in resumed.stderr and "Traceback" not in resumed.stderr
