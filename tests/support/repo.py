"""Where things are, for tests: the repository, the helpers child processes import, and where tests leave
screenshots and reports for a person to look at; and the `emo-r3` command as a child process runs it."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = ROOT / "tests" / "support"
ARTIFACTS = ROOT / "test-artifacts"
EMO_R3 = [sys.executable, "-m", "emo_r3.graphs.cli"]
