"""Append-only JSONL results that survive kill -9 and full disks: one fsynced line per finished item, keyed by id."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError


class ResultRecord(BaseModel):
    """What every results line has: the item id, whether it finished ok, and why not."""

    id: str
    status: str
    error: str | None = None


R = TypeVar("R", bound=ResultRecord)

# How to get going again after a write error, by errno; the file is always left resumable.
_WRITE_HINTS = {
    errno.ENOSPC: "free space",
    errno.EDQUOT: "free space (the disk quota is used up)",
    errno.EFBIG: "raise the file-size limit (ulimit -f) or free space",
}


class ResultsFileError(ValueError):
    """The results file cannot be used as it is: a complete line is not a record of the expected type (a different
    file, or a newer format), or the file cannot be opened. Refuse to touch the file instead of guessing."""


class ResultsFileInUseError(ResultsFileError):
    """Another process (or another ResultsFile in this one) is writing the file now."""


class ResultsWriteError(RuntimeError):
    """A record could not be written (disk full, file too large, I/O error). The file was cut back to its last
    complete record, so it is resumable; the record that failed is not in it and its item runs again."""

    def __init__(self, path: Path, error: OSError, kept: int) -> None:
        self.path, self.errno, self.kept = path, error.errno, kept
        super().__init__(
            f"could not write {path}: {error.strerror or error}; {kept} results kept; "
            f"{what_to_do(error)} and run the same command again to resume"
        )


def what_to_do(error: OSError) -> str:
    """What a user can do about a failed write, e.g. `free space` for a full disk."""
    return _WRITE_HINTS.get(error.errno or 0, "fix the cause")


class ResultsFile(Generic[R]):
    """Append-only JSONL of records of one type.

    Constructing one only reads: records come from the complete lines, blank lines are skipped, and a torn last
    line (no newline: a kill or a failed write) is ignored. Writing needs the file's lock (`with ResultsFile(...)`
    holds it for a whole run; a lone `append` takes it for that one record), so two writers never interleave and a
    torn tail is only ever cut by the lock holder: on taking the lock and again before each append. A record counts
    as done only once all its bytes are written and fsynced; on a write error the file is cut back to its last
    complete record and ResultsWriteError is raised. Any unreadable complete line is an error, never cut.
    """

    def __init__(self, path: Path, record_type: type[R]) -> None:
        self.path = path
        self.record_type = record_type
        self.records: dict[str, R] = {}
        self._fd: int | None = None
        self._created = False
        try:
            data = path.read_bytes() if path.exists() else b""
        except OSError as error:
            raise ResultsFileError(f"cannot read {path}: {error.strerror or error}") from error
        self._load(data)

    def __enter__(self) -> ResultsFile[R]:
        return self.lock()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lock(self) -> ResultsFile[R]:
        """Take the file for writing (created if missing) until `close`; re-read it under the lock and cut a torn
        tail. Raises ResultsFileInUseError if another writer holds it, ResultsFileError if it cannot be opened."""
        if self._fd is None:
            self._created = not self.path.exists()
            fd = self._open_locked()
            try:
                with open(fd, "rb", closefd=False) as handle:
                    self._load(handle.read())
                _cut_torn_tail(fd)
            except OSError as error:
                os.close(fd)
                raise ResultsFileError(f"cannot read {self.path}: {error.strerror or error}") from error
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        return self

    def close(self) -> None:
        """Release the lock (appends after this take it one record at a time). A file the lock created and nothing
        was written to is removed again: a command that stopped before its first result leaves nothing behind."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                if self._created and os.fstat(self._fd).st_size == 0:
                    self.path.unlink()
            os.close(self._fd)
            self._fd = None

    def _load(self, data: bytes) -> None:
        self.records = {}
        # Only "\n" ends a record; whatever follows the last one is a torn tail (or nothing).
        *lines, _torn = data.split(b"\n")
        for number, line in enumerate(lines, start=1):
            if line.strip():  # a blank line carries no record and must not poison the file
                record = self._parse(line, number)
                self.records[record.id] = record

    def _parse(self, line: bytes, number: int) -> R:
        try:
            return self.record_type.model_validate_json(line)
        except ValidationError as error:
            raise ResultsFileError(
                f"{self.path}:{number} is not a {self.record_type.__name__} ({error.error_count()} problems, "
                f"first: {error.errors()[0]['msg']}); is this the right file for this command?"
            ) from error

    def _open_locked(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise ResultsFileError(f"cannot write {self.path}: {error.strerror or error}") from error
        try:
            # flock locks belong to the open file description: a second open, even in this process, conflicts.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            os.close(fd)
            raise ResultsFileInUseError(
                f"{self.path} is being written by another running command; wait for it to finish, "
                "or write the results somewhere else"
            ) from error
        except OSError as error:  # e.g. a network file system without locks
            os.close(fd)
            raise ResultsFileError(
                f"cannot lock {self.path} ({error.strerror or error}); write the results to a local disk"
            ) from error
        return fd

    def done(self, item_id: str, *, retry_errors: bool = False) -> bool:
        record = self.records.get(item_id)
        return record is not None and not (retry_errors and record.status == "error")

    def append(self, record: R) -> None:
        """Write one record and fsync it; only then is it in `records`. Raises ResultsWriteError on a write error."""
        line = (record.model_dump_json() + "\n").encode()
        self._check_reads_back(record, line)
        if self._fd is not None:
            self._write_line(self._fd, line)
        else:
            fd = self._open_locked()
            try:
                self._write_line(fd, line)
            finally:
                os.close(fd)
        self.records[record.id] = record

    def _check_reads_back(self, record: R, line: bytes) -> None:
        # A line the next run could not read would make it refuse the whole file (e.g. inf is written as null).
        try:
            self.record_type.model_validate_json(line)
        except ValidationError as error:
            raise ValueError(
                f"record {record.id!r} would not read back from {self.path} ({error.errors()[0]['msg']}); not written"
            ) from error

    def _write_line(self, fd: int, line: bytes) -> None:
        start: int | None = None
        try:
            start = _cut_torn_tail(fd)
            _write_all(fd, line)
            os.fsync(fd)
        except OSError as error:
            if start is not None:
                _truncate_quietly(fd, start)
            raise ResultsWriteError(self.path, error, kept=len(self.records)) from error


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write only part (a full disk, a file-size limit): write the rest until all is out or it fails."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:
            raise OSError(errno.EIO, "the write made no progress")
        view = view[written:]


def _cut_torn_tail(fd: int) -> int:
    """Cut anything after the last newline (a record torn by a kill or a failed write); return the new size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:
        chunk_start = max(0, end - (1 << 16))
        newline = os.pread(fd, end - chunk_start, chunk_start).rfind(b"\n")
        if newline >= 0:
            end = chunk_start + newline + 1
            break
        end = chunk_start
    os.ftruncate(fd, end)
    os.fsync(fd)
    return end


def _truncate_quietly(fd: int, size: int) -> None:
    # Best effort: if even this fails, the torn tail is cut before the next append or when the file is next locked.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, size)
        os.fsync(fd)
