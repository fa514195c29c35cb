"""Can this path be written as an output file or folder? Asked before any work, so a bad `--out` costs nothing.

The checks only look (nothing is created): the commands create what they write when they write it. They catch what
a user gets wrong (a folder where a file goes, a file where a folder goes, a parent that is a file or cannot be
written in, a link loop); the open that follows still reports what they cannot see, such as a read-only mount
under root.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class OutputPathError(ValueError):
    """An output path that cannot be written; the message names the path and says what to pass instead."""


def check_output_file(path: Path) -> None:
    """Raise OutputPathError unless `path` is a writable file, or a file that can be created (every missing folder
    above it can be made)."""
    info = _stat(path)
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            raise OutputPathError(f"{path} is a folder; give a file name instead, e.g. {path / 'results.jsonl'}")
        if not stat.S_ISREG(info.st_mode):
            raise OutputPathError(f"{path} exists and is not a regular file; give another file name")
        if not os.access(path, os.W_OK):
            raise OutputPathError(f"{path} is read-only; make it writable or give another file name")
        return
    _check_can_create(path, path.parent)


def check_output_folder(path: Path) -> None:
    """Raise OutputPathError unless `path` is a folder that can be written in, or a folder that can be created."""
    _check_can_create(path, path)


def _check_can_create(target: Path, folder: Path) -> None:
    """`folder`, which `target` needs, exists and can be written in, or its nearest existing ancestor can."""
    existing = next((candidate for candidate in (folder, *folder.parents) if _stat(candidate) is not None), None)
    if existing is None:  # a relative path, and the current folder was deleted
        raise OutputPathError(f"cannot write {target}: no folder above it exists; give another path")
    if not existing.is_dir():
        if existing == target:
            raise OutputPathError(f"{target} is a file, not a folder; give a folder (new or existing)")
        raise OutputPathError(f"cannot write {target}: {existing} is a file, not a folder; give another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {target}: no permission to write in {existing}; give another path")


def _stat(path: Path) -> os.stat_result | None:
    """The path's stat, or None if it does not exist (or a folder above it is a file, found further up)."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:  # a link loop, a name too long, a folder we may not look into
        raise OutputPathError(f"{path} cannot be used ({error.strerror or error}); give another path") from error
