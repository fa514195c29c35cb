"""Checkpoints for exact resume: trained weights, optimizer state, RNG states and the step (= data position).

A checkpoint folder holds only data, never a pickle: each policy's trained tensors, the optimizer's tensors and the
torch RNG states as safetensors; the optimizer's structure (parameter groups, step counts, which tensor is which:
`tensor_tree`), the step, Python and NumPy RNG states and the run's config (its graph inline: what `emo-r3 export`
rebuilds the policies from) as JSON. A crafted checkpoint can therefore fail to load, but cannot run code.

A checkpoint is written into a temporary folder and renamed into place, and `latest` is replaced atomically after
it, so a process killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from emo_r3.training.tensor_tree import load_tree, save_tree

LATEST = "latest"
STATE, RNG = "state.json", "rng.safetensors"
OPTIMIZER_TENSORS, OPTIMIZER_STRUCTURE = "optimizer.safetensors", "optimizer.json"
LEGACY_OPTIMIZER = "optimizer.pt"  # an older format, a pickle: recognised to say so, never read
_STEP_FOLDER = re.compile(r"step-(\d+)")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read back; the message names the folder."""


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The Python and NumPy generators' states as JSON values, and torch's (CPU, every CUDA device) as tensors."""
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), position, has_gauss, cached],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())}
    return plain, tensors


def set_rng_state(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(name.startswith("cuda.") for name in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    root: Path,
    step: int,
    *,
    policies: dict[str, dict[str, torch.Tensor]],
    optimizer: dict[str, Any],
    extra: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write `root/step-<step>`, point `root/latest` at it, prune all but the newest `keep` (never this one)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    partial = root / f".partial-{final.name}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for index, tensors in enumerate(policies.values()):
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, partial / f"policy-{index}.safetensors")
    save_tree(optimizer, partial / OPTIMIZER_TENSORS, partial / OPTIMIZER_STRUCTURE)
    plain_rng, rng_tensors = rng_state()
    save_file(rng_tensors, partial / RNG)
    state = {"step": step, "policies": list(policies), "rng": plain_rng, **extra}
    (partial / STATE).write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, root / LATEST)
    _prune(root, final, keep)
    return final


def _prune(root: Path, written: Path, keep: int) -> None:
    """Delete the older checkpoints beyond `keep`, by step; the one just written always stays."""
    others = sorted((p for p in root.glob("step-*") if p != written), key=_step_of)
    for old in others[: max(0, len(others) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def _step_of(folder: Path) -> int:
    match = _STEP_FOLDER.fullmatch(folder.name)
    return int(match[1]) if match else -1


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    folder = root / pointer.read_text().strip()
    if not folder.is_dir():
        raise CheckpointError(f"{pointer} names {folder.name}, which does not exist; remove {pointer} to start over")
    return folder


def load_checkpoint(folder: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """{'policies', 'optimizer', 'state', 'rng'} of one checkpoint folder; only data is read, never code."""
    state, policies = load_policies(folder, device)
    if not (folder / OPTIMIZER_STRUCTURE).exists() and (folder / LEGACY_OPTIMIZER).exists():
        raise CheckpointError(
            f"checkpoint {folder} keeps its optimizer state as a pickle ({LEGACY_OPTIMIZER}, an older format) and "
            "cannot be resumed; `emo-r3 export` still exports its weights, or train with a new run_dir"
        )
    with _readable(folder):
        optimizer = load_tree(folder / OPTIMIZER_TENSORS, folder / OPTIMIZER_STRUCTURE, device)
        rng = load_file(folder / RNG)
    return {"policies": policies, "optimizer": optimizer, "state": state, "rng": rng}


def load_policies(folder: Path, device: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """A checkpoint's state (step, config, ...) and each policy's trained tensors by name, without the optimizer."""
    with _readable(folder):
        state = json.loads((folder / STATE).read_text())
        policies = {
            name: load_file(folder / f"policy-{index}.safetensors", device=str(device))
            for index, name in enumerate(state["policies"])
        }
    return state, policies


@contextlib.contextmanager
def _readable(folder: Path) -> Iterator[None]:
    """Any failure to read or parse the folder's files as a CheckpointError naming the folder."""
    try:
        yield
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, SafetensorError) as error:
        raise CheckpointError(f"checkpoint {folder} cannot be read: {type(error).__name__}: {error}") from error
