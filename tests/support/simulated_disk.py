"""A disk that fills up, for unit tests: `os.write` writes at most `free` more bytes (a part at a time, as a real
short write does), then fails with `error`. The real file underneath shows what a real disk would hold."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


class SimulatedDisk:
    def __init__(self, free: int, error: int = errno.ENOSPC, chunk: int = 1 << 30) -> None:
        self.free, self.error, self.chunk = free, error, chunk
        self._write = os.write

    def write(self, fd: int, data: bytes) -> int:
        if self.free == 0:
            raise OSError(self.error, os.strerror(self.error))
        written = self._write(fd, bytes(data[: min(len(data), self.free, self.chunk)]))
        self.free -= written
        return written


@contextmanager
def simulated(disk: SimulatedDisk) -> Iterator[SimulatedDisk]:
    """Every os.write in this process goes through `disk` until the block ends."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "write", disk.write)
        yield disk
