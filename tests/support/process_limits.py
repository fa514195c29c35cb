"""Limits for the child processes tests start: a file-size limit, so writes fail as they do on a full disk."""

from __future__ import annotations

import resource
import signal
from collections.abc import Callable


def file_size_limit(size: int) -> Callable[[], None]:
    """A `preexec_fn` after which no file the child writes can grow past `size` bytes: the write that crosses the
    limit is short, the next fails with EFBIG, as when a disk fills up (no real disk has to be filled)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the child instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return apply
