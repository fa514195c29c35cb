"""The offline model cache: each kind built once into `$EMO_R3_HOME/models/<kind>` (or ~/.cache/emo-r3/models) and
rebuilt only when its recipe changes. Torch-free until a build runs, so a viewer or CLI can locate models cheaply.

Every build is an ordinary Hugging Face folder (safetensors, tokenizer, processor, chat template, generation_config)
so transformers and vLLM load it like any downloaded checkpoint. Random weights are seeded: two builds with the
same seed have the same weights.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from emo_r3.agents.offline_models.errors import OfflineModelError

ModelKind = Literal["tiny-idefics3", "tiny-qwen2.5-vl", "smollm2", "smollm2-idefics3"]
MODEL_KINDS: tuple[ModelKind, ...] = ("tiny-idefics3", "tiny-qwen2.5-vl", "smollm2", "smollm2-idefics3")
# Bump when a recipe changes so cached folders built by older code are rebuilt instead of silently reused.
BUILD_VERSION = 1
BUILD_INFO_FILE = "emo_r3_build.json"
_PARTIAL_MARK = ".partial-"


def default_model_cache() -> Path:
    """`$EMO_R3_HOME/models`, else `~/.cache/emo-r3/models`: builds survive across runs and checkouts."""
    home = os.environ.get("EMO_R3_HOME")
    return Path(home) / "models" if home else Path.home() / ".cache" / "emo-r3" / "models"


def ensure_model(kind: ModelKind, cache_dir: Path | None = None) -> Path:
    """Return `cache_dir/kind`, building it first if absent or built by an older recipe.

    The build goes to a temporary sibling folder renamed into place when complete, under a per-kind file
    lock, so a killed build never leaves a half folder and concurrent callers build once.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_model_cache()
    target = cache_dir / kind
    if _is_current(target, kind):
        return target
    dependency = ensure_model("smollm2", cache_dir) if kind == "smollm2-idefics3" else None
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _lock(cache_dir / f".{kind}.lock"):
        if _is_current(target, kind):  # another process finished it while we waited
            return target
        _remove_partials(cache_dir, kind)
        partial = Path(tempfile.mkdtemp(prefix=f".{kind}{_PARTIAL_MARK}", dir=cache_dir))
        partial.chmod(0o755)  # mkdtemp's 0700 would survive the rename and hide the model from other users
        try:
            started = time.monotonic()
            BUILDERS[kind](partial, dependency)
            _write_build_info(partial, kind, time.monotonic() - started)
            _replace_dir(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return target


def _is_current(target: Path, kind: str) -> bool:
    try:
        info = json.loads((target / BUILD_INFO_FILE).read_text())
    except (OSError, ValueError):
        return False
    return info.get("kind") == kind and info.get("version") == BUILD_VERSION


def _write_build_info(folder: Path, kind: str, seconds: float) -> None:
    info = {"kind": kind, "version": BUILD_VERSION, "seed": 0, "build_seconds": round(seconds, 1)}
    (folder / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`; an outdated `target` is renamed away first and deleted after the swap."""
    stale = None
    if target.exists():
        stale = target.with_name(f".{target.name}{_PARTIAL_MARK}stale-{os.getpid()}")
        target.rename(stale)
    new.rename(target)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


def _remove_partials(cache_dir: Path, kind: str) -> None:
    """Delete leftovers of killed builds; safe because we hold the kind's lock, so none is in progress."""
    for leftover in cache_dir.glob(f".{kind}{_PARTIAL_MARK}*"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tiny_idefics3(out: Path, _: Path | None) -> Path:
    from emo_r3.agents.offline_models.idefics3 import build_idefics3

    return build_idefics3(out, text_model="tiny")


def _tiny_qwen2_5_vl(out: Path, _: Path | None) -> Path:
    from emo_r3.agents.offline_models.qwen_vl import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(out)


def _smollm2(out: Path, _: Path | None) -> Path:
    from emo_r3.agents.offline_models.smollm2 import import_smollm2_text

    return import_smollm2_text(out)


def _smollm2_idefics3(out: Path, text_model: Path | None) -> Path:
    from emo_r3.agents.offline_models.idefics3 import build_idefics3

    if text_model is None:
        raise OfflineModelError("smollm2-idefics3 needs the smollm2 build first")
    return build_idefics3(out, text_model=text_model)


# kind -> build(into folder, dependency folder); each imports its family (and torch) only when it runs.
BUILDERS: dict[str, Callable[[Path, Path | None], Path]] = {
    "tiny-idefics3": _tiny_idefics3,
    "tiny-qwen2.5-vl": _tiny_qwen2_5_vl,
    "smollm2": _smollm2,
    "smollm2-idefics3": _smollm2_idefics3,
}
