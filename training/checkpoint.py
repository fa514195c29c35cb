"""Checkpoints for exact resume: trained weights, optimizer state, RNG states and the step (= data position).

A checkpoint is written into a temporary folder and renamed into place, and `latest` is replaced atomically after
it, so a process killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read back; the message names the folder."""


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state()}
    state["torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    root: Path,
    step: int,
    *,
    policies: dict[str, dict[str, torch.Tensor]],
    optimizer: dict[str, Any],
    extra: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write `root/step-<step>` (policies.pt, optimizer.pt, state.pt), point `root/latest` at it, prune old ones."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    partial = root / f".partial-{final.name}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    torch.save(policies, partial / "policies.pt")
    torch.save(optimizer, partial / "optimizer.pt")
    torch.save({"step": step, "rng": rng_state(), **extra}, partial / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, root / LATEST)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    folder = root / pointer.read_text().strip()
    if not folder.is_dir():
        raise CheckpointError(f"{pointer} names {folder.name}, which does not exist; remove {pointer} to start over")
    return folder


def load_checkpoint(folder: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """{'policies', 'optimizer', 'state'} of one checkpoint folder."""
    try:
        return {
            name: torch.load(folder / f"{name}.pt", map_location=device, weights_only=False)
            for name in ("policies", "optimizer", "state")
        }
    except (OSError, RuntimeError, EOFError) as error:
        raise CheckpointError(f"checkpoint {folder} cannot be read: {error}") from error
