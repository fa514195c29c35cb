"""Batch runs that survive kill -9: inputs from a folder or JSONL, results appended one fsynced line at a time."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, ValidationError, computed_field

from emo_r3.graphs.progress import ProgressCallback
from emo_r3.graphs.results_file import ResultRecord, ResultsFile
from emo_r3.graphs.trajectory import EmotionQuery, EmotionResult

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class EmotionGraphLike(Protocol):
    def astream_batch(
        self, queries: Iterable[EmotionQuery], *, max_concurrency: int, progress: ProgressCallback | None = None
    ) -> AsyncGenerator[EmotionResult, None]: ...


class BatchInputError(ValueError):
    """The batch input itself (not one item) cannot be read."""


class BatchItem(BaseModel):
    """One line of work: a valid query, or the reason its input line could not become one."""

    id: str
    query: EmotionQuery | None = None
    problem: str | None = None


class BatchRecord(ResultRecord):
    """One line of the results file."""

    status: Literal["ok", "error"]
    run_id: str | None = None  # the trace store's run id (also the trajectory id)
    label: str | None = None
    label_set: str | None = None
    valence: str | None = None
    arousal: str | None = None
    rationale: str = ""
    format_ok: bool = False
    termination: str | None = None
    path: list[str] = Field(default_factory=list)
    trajectory: dict[str, Any] | None = None

    @classmethod
    def from_result(cls, item_id: str, result: EmotionResult, *, with_trajectory: bool) -> BatchRecord:
        return cls(
            id=item_id,
            status="ok" if result.ok else "error",
            run_id=result.trajectory.id if result.trajectory else None,
            label=result.label,
            label_set=result.label_set,
            valence=result.valence,
            arousal=result.arousal,
            rationale=result.rationale,
            format_ok=result.format_ok,
            termination=result.termination,
            path=result.path,
            error=result.error,
            trajectory=result.trajectory.model_dump(mode="json") if with_trajectory and result.trajectory else None,
        )


def read_batch_items(source: Path) -> Iterator[BatchItem]:
    """Items from a folder of images (recursively, any case of extension) or a JSONL file of queries. Whatever
    cannot become a query (a bad line, an image that is a broken link) is an item with a problem, never skipped."""
    if source.is_dir():
        yield from _read_folder(source)
    elif source.is_file():
        yield from _read_jsonl(source)
    else:
        raise BatchInputError(f"{source}: no such folder or JSONL file")


def _read_folder(source: Path) -> Iterator[BatchItem]:
    unreadable: list[OSError] = []
    found: list[Path] = []
    # os.walk lists a symlink loop or a broken link among the files (rglob's is_file() hid them without a word).
    for folder, _subfolders, names in os.walk(source, onerror=unreadable.append):
        found += [Path(folder, name) for name in names if Path(name).suffix.lower() in IMAGE_SUFFIXES]
    for error in unreadable:
        if Path(error.filename) == source:
            raise BatchInputError(f"{source}: cannot read this folder ({error.strerror or error})")
        folder_id = Path(error.filename).relative_to(source).as_posix() + "/"
        yield BatchItem(id=folder_id, problem=f"{folder_id}: cannot read this folder ({error.strerror or error})")
    for path in sorted(found):
        item_id = path.relative_to(source).as_posix()
        if path.is_file():
            yield BatchItem(id=item_id, query=EmotionQuery(id=item_id, images=[path]))
        else:
            yield BatchItem(id=item_id, problem=f"{item_id}: {_not_a_file(path)}")


def _not_a_file(path: Path) -> str:
    try:
        path.stat()
    except FileNotFoundError:
        return "a broken symbolic link (what it points to is missing)"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    return "not a regular file"


def _read_jsonl(source: Path) -> Iterator[BatchItem]:
    # Only "\n" ends a line (JSONL); a stray "\r" or other separator stays inside its line.
    try:
        with source.open(encoding="utf-8", errors="replace", newline="\n") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    yield _jsonl_item(source.parent, line, number)
    except OSError as error:
        raise BatchInputError(f"{source}: cannot be read ({error.strerror or error})") from error


def _jsonl_item(folder: Path, line: str, number: int) -> BatchItem:
    """One line's item; every way a line can be wrong is a problem naming the line, never an exception."""
    item_id = f"line-{number}"
    try:
        record = _parse_line(line)
        item_id = _item_id(record, item_id)
        images = [_image_path(folder, value, key) for key, value in _image_values(record)]
        query = EmotionQuery(id=item_id, images=images, text=record.get("text"), label_set=record.get("label_set"))
    except (ValueError, ValidationError, RecursionError) as error:
        return BatchItem(id=item_id, problem=f"line {number}: {_one_line(error)}")
    return BatchItem(id=item_id, query=query)


def _parse_line(line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply to read") from None
    if not isinstance(record, dict):
        raise ValueError("each line must be a JSON object")
    try:
        # A "\ud800" escape decodes to a lone surrogate, which no file name, prompt or results line can hold.
        json.dumps(record, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ValueError("the line holds an invalid \\u escape (a lone surrogate)") from None
    return record


def _item_id(record: dict[str, Any], default: str) -> str:
    if "id" not in record:
        return default
    value = record["id"]
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"id must be a non-empty string or a number, not {json.dumps(value)[:80]}")


def _image_values(record: dict[str, Any]) -> list[tuple[str, Any]]:
    """`images` (or, when it is missing or empty, `image`): one path, or a list of paths."""
    key = "images" if record.get("images") not in (None, []) else "image"
    value = record.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [(key, value)]
    if isinstance(value, list):
        return [(f"{key}[{index}]", item) for index, item in enumerate(value)]
    raise ValueError(f"{key} must be a path or a list of paths, not {json.dumps(value)[:80]}")


def _image_path(folder: Path, value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a path (a string), not {json.dumps(value)[:80]}")
    if "\0" in value:
        raise ValueError(f"{where} holds a NUL character, which no path can")
    # Relative to the JSONL file, so a dataset folder can move as a whole. Made absolute without resolving anything
    # (not even "..", which a symlinked folder changes): a link loop fails later as this item's image error.
    return str(Path(folder, value).absolute())


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


class BatchSummary(BaseModel):
    total: int
    skipped: int  # done before (resumed), not run again
    duplicates: int
    ok: int
    errors: int
    errors_before: int  # skipped items whose recorded result is an error (`--retry-errors` runs them again)

    @computed_field
    @property
    def failed(self) -> int:
        """Items whose result in the file is an error, from this run or an earlier one."""
        return self.errors + self.errors_before


async def run_batch(
    graph: EmotionGraphLike,
    items: list[BatchItem],
    results: ResultsFile[BatchRecord],
    *,
    max_concurrency: int = 4,
    retry_errors: bool = False,
    with_trajectory: bool = False,
    on_record: Callable[[BatchRecord], None] = lambda _record: None,
    progress: ProgressCallback | None = None,
) -> BatchSummary:
    """Run every item not already in `results`, appending each record as soon as its run ends. A write error
    (ResultsWriteError) stops the batch; everything recorded before it stays in the file."""
    todo: list[EmotionQuery] = []
    seen: set[str] = set()
    skipped = duplicates = ok = errors = errors_before = 0
    for item in items:
        if item.id in seen:
            duplicates += 1  # the first item with an id wins; results are keyed by id
            continue
        seen.add(item.id)
        if results.done(item.id, retry_errors=retry_errors):
            skipped += 1
            errors_before += results.records[item.id].status == "error"
        elif item.query is None:
            record = BatchRecord(id=item.id, status="error", termination="error", error=f"bad input: {item.problem}")
            results.append(record)
            errors += 1
            on_record(record)
        else:
            todo.append(item.query)
    # aclosing: if a record cannot be written (ResultsWriteError), the runs still going are cancelled before the
    # error leaves here, so the batch stops cleanly instead of running items whose results would be lost.
    async with aclosing(graph.astream_batch(todo, max_concurrency=max_concurrency, progress=progress)) as stream:
        async for result in stream:
            record = BatchRecord.from_result(result.query_id, result, with_trajectory=with_trajectory)
            results.append(record)
            ok, errors = ok + (record.status == "ok"), errors + (record.status == "error")
            on_record(record)
    return BatchSummary(
        total=len(items), skipped=skipped, duplicates=duplicates, ok=ok, errors=errors, errors_before=errors_before
    )
