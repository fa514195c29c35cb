"""A Hugging Face Hub cache filled without a Hub: files laid out exactly as `snapshot_download` leaves them.

`<cache>/models--org--name/` holds `blobs/<id>` (sha256 for LFS files such as weights, the git blob sha1 for the
others), `snapshots/<commit>/<file>` as relative symlinks to those blobs, and `refs/<branch or tag>` holding the
commit, so huggingface_hub's offline look-ups (and `scan_cache_dir`) treat it as a real download.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils.sha import git_hash

LFS_SUFFIXES = (".safetensors", ".bin")


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by its relative path, as a repo of that folder would hold them."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def add_to_hub_cache(cache: Path, repo_id: str, files: Mapping[str, bytes], refs: Iterable[str] = ("main",)) -> str:
    """Cache `files` as one commit of model repo `repo_id`, pointed to by `refs`; returns the commit hash."""
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    blob_ids = {name: _blob_id(name, data) for name, data in files.items()}
    commit = hashlib.sha1("\n".join(f"{n} {b}" for n, b in sorted(blob_ids.items())).encode()).hexdigest()
    for name, data in files.items():
        blob = repo / "blobs" / blob_ids[name]
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # the Hub writes the bare hash, no newline
    return commit


def _blob_id(name: str, data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if name.endswith(LFS_SUFFIXES) else git_hash(data)
