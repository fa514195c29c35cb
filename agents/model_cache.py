"""Where offline models are built and found. Torch-free, so a viewer or CLI can locate models cheaply."""

from __future__ import annotations

import os
from pathlib import Path


def default_model_cache() -> Path:
    """`$EMO_R3_HOME/models`, else `~/.cache/emo-r3/models`: builds survive across runs and checkouts."""
    home = os.environ.get("EMO_R3_HOME")
    return Path(home) / "models" if home else Path.home() / ".cache" / "emo-r3" / "models"
