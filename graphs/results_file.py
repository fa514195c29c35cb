"""Append-only JSONL results that survive kill -9: one fsynced line per finished item, keyed by item id."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError


class ResultRecord(BaseModel):
    """What every results line has: the item id and whether it finished ok."""

    id: str
    status: str


R = TypeVar("R", bound=ResultRecord)


class ResultsFileError(ValueError):
    """A complete line of a results file is not a record of the expected type (a different file, or a newer
    format): refuse to touch the file instead of guessing."""


class ResultsFile(Generic[R]):
    """Append-only JSONL of records of one type. Each record is one write + fsync, so a kill loses at most
    the line being written: a torn last line (no newline yet) is cut off on open, and its item runs again.
    Any other unreadable line is an error, never a reason to cut the file."""

    def __init__(self, path: Path, record_type: type[R]) -> None:
        self.path = path
        self.record_type = record_type
        self.records: dict[str, R] = {}
        if path.exists():
            self._load_and_repair()

    def _load_and_repair(self) -> None:
        data = self.path.read_bytes()
        good_end = 0
        for number, line in enumerate(data.splitlines(keepends=True), start=1):
            if not line.endswith(b"\n"):
                break  # torn by a kill mid-write
            try:
                record = self.record_type.model_validate_json(line)
            except ValidationError as error:
                raise ResultsFileError(
                    f"{self.path}:{number} is not a {self.record_type.__name__} ({error.error_count()} problems, "
                    f"first: {error.errors()[0]['msg']}); is this the right file for this command?"
                ) from error
            self.records[record.id] = record
            good_end += len(line)
        if good_end < len(data):
            with self.path.open("r+b") as handle:
                handle.truncate(good_end)

    def done(self, item_id: str, *, retry_errors: bool = False) -> bool:
        record = self.records.get(item_id)
        return record is not None and not (retry_errors and record.status == "error")

    def append(self, record: R) -> None:
        line = (record.model_dump_json() + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records[record.id] = record
