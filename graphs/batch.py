"""Batch runs that survive kill -9: inputs from a folder or JSONL, results appended one fsynced line at a time."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, ValidationError

from emo_r3.graphs.results_file import ResultRecord, ResultsFile
from emo_r3.graphs.trajectory import EmotionQuery, EmotionResult

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class EmotionGraphLike(Protocol):
    def astream_batch(
        self, queries: Iterable[EmotionQuery], *, max_concurrency: int
    ) -> AsyncIterator[EmotionResult]: ...


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
    error: str | None = None
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
    """Items from a folder of images (recursively, any case of extension) or a JSONL file of queries."""
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            item_id = path.relative_to(source).as_posix()
            yield BatchItem(id=item_id, query=EmotionQuery(id=item_id, images=[path]))
    elif source.is_file():
        yield from _read_jsonl(source)
    else:
        raise BatchInputError(f"{source}: no such folder or JSONL file")


def _read_jsonl(source: Path) -> Iterator[BatchItem]:
    with source.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            item_id = f"line-{number}"
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("each line must be a JSON object")
                item_id = str(record.get("id", item_id))
                images = record.get("images") or ([record["image"]] if "image" in record else [])
                # Relative image paths are relative to the JSONL file, so a dataset folder can move as a whole.
                images = [str((source.parent / p).resolve()) if isinstance(p, str) else p for p in images]
                query = EmotionQuery(id=item_id, images=images, text=record.get("text"),
                                     label_set=record.get("label_set"))  # fmt: skip
                yield BatchItem(id=item_id, query=query)
            except (ValueError, ValidationError) as error:
                yield BatchItem(id=item_id, problem=f"line {number}: {_one_line(error)}")


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


class BatchSummary(BaseModel):
    total: int
    skipped: int
    duplicates: int
    ok: int
    errors: int


async def run_batch(
    graph: EmotionGraphLike,
    items: list[BatchItem],
    results: ResultsFile[BatchRecord],
    *,
    max_concurrency: int = 4,
    retry_errors: bool = False,
    with_trajectory: bool = False,
    on_record: Callable[[BatchRecord], None] = lambda _record: None,
) -> BatchSummary:
    """Run every item not already in `results`, appending each record as soon as its run ends."""
    todo: list[EmotionQuery] = []
    seen: set[str] = set()
    skipped = duplicates = ok = errors = 0
    for item in items:
        if item.id in seen:
            duplicates += 1  # the first item with an id wins; results are keyed by id
            continue
        seen.add(item.id)
        if results.done(item.id, retry_errors=retry_errors):
            skipped += 1
        elif item.query is None:
            record = BatchRecord(id=item.id, status="error", termination="error", error=f"bad input: {item.problem}")
            results.append(record)
            errors += 1
            on_record(record)
        else:
            todo.append(item.query)
    async for result in graph.astream_batch(todo, max_concurrency=max_concurrency):
        record = BatchRecord.from_result(result.query_id, result, with_trajectory=with_trajectory)
        results.append(record)
        ok, errors = ok + (record.status == "ok"), errors + (record.status == "error")
        on_record(record)
    return BatchSummary(total=len(items), skipped=skipped, duplicates=duplicates, ok=ok, errors=errors)
