"""The folders under `run_dir/served` that each step's trained weights are saved to for the servers to load.

A server keeps re-reading the folder it was last given (vLLM 0.32 re-reads an adapter loaded in place at every
engine step, issue #33791; a request after the folder is gone kills the engine), so a folder stays until every
server has been given a newer one: each push keeps its own folder and the one pushed before it. The first push of a
process removes nothing else: a resumed run's servers may still read a folder its killed driver pushed, which can be
of a later step than the one resumed from, or of that very step: a folder already there is never written over, the
push takes a fresh name beside it.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path


class ServedFolders:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._pushed: Path | None = None

    @contextlib.contextmanager
    def push(self, step: int) -> Iterator[Path]:
        """A new, empty folder for `step`'s weights; once the block has given them to the servers, the folders no
        server reads any more are removed."""
        folder = self._unused(step)
        yield folder
        if self._pushed is not None:
            for old in self.root.glob("step-*"):
                if old not in (folder, self._pushed):
                    shutil.rmtree(old, ignore_errors=True)
        self._pushed = folder

    def _unused(self, step: int) -> Path:
        """`step-<step>`, or `step-<step>-again-<n>` when a folder of that step is there already."""
        folder = self.root / f"step-{step:08d}"
        again = 0
        while folder.exists():
            again += 1
            folder = self.root / f"step-{step:08d}-again-{again}"
        return folder
