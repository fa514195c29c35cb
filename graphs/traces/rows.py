"""Runs and calls ↔ SQLite rows. Token ids and logprobs are packed little-endian arrays (4 bytes each): a 2,000-token
call costs 16 KB, not 40 KB of JSON. Calls live in their own table; a run's stored result keeps everything else."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from array import array
from collections.abc import Sequence
from typing import Any

from PIL import Image

from emo_r3.agents.call_record import LLMCall
from emo_r3.agents.images import PreparedImage
from emo_r3.graphs.traces.records import RunSummary
from emo_r3.graphs.trajectory import EmotionResult

THUMBNAIL_SIZE = (256, 256)


def pack_ints(values: Sequence[int]) -> bytes:
    return array("i", values).tobytes()


def unpack_ints(blob: bytes) -> list[int]:
    return array("i", blob).tolist()


def pack_floats(values: Sequence[float]) -> bytes:
    return array("f", values).tobytes()


def unpack_floats(blob: bytes) -> list[float]:
    return array("f", blob).tolist()


SUMMARY_COLUMNS = (
    "id, created_at, source, query_id, input_ref, label_set, status, termination, label, format_ok, rounds, "
    "path, error, latency_s, image_hashes"
)


def summary_from_row(row: sqlite3.Row) -> RunSummary:
    fields = {key: row[key] for key in SUMMARY_COLUMNS.split(", ")}
    fields["path"] = json.loads(fields["path"])
    fields["image_hashes"] = json.loads(fields["image_hashes"])
    fields["format_ok"] = bool(fields["format_ok"])
    return RunSummary.model_validate(fields)


def run_row(
    run_id: str, result: EmotionResult, source: str, config_hash: str | None, input_ref: str | None
) -> tuple[Any, ...]:
    trajectory = result.trajectory
    calls = trajectory.calls if trajectory else []
    # Calls live in their own table; the stored result keeps everything else about the run.
    stored = result
    if trajectory is not None:
        stored = result.model_copy(update={"trajectory": trajectory.model_copy(update={"calls": []})})
    return (
        run_id, time.time(), source, config_hash, input_ref, result.query_id,
        trajectory.text if trajectory else None, result.label_set,
        json.dumps([i.sha256 for i in trajectory.images] if trajectory else []),
        "ok" if result.ok else "error", result.termination, result.label, result.valence, result.arousal,
        int(result.format_ok), trajectory.corrections if trajectory else 0, json.dumps(result.path), result.error,
        sum(c.latency_s for c in calls), sum(len(c.prompt_token_ids) for c in calls),
        sum(len(c.completion_token_ids) for c in calls), stored.model_dump_json(),
    )  # fmt: skip


def call_row(run_id: str, index: int, call: LLMCall) -> tuple[Any, ...]:
    return (
        run_id, index, call.role, call.purpose, call.node, call.round, call.model_id, call.adapter,
        call.weight_version, json.dumps([m.model_dump(mode="json") for m in call.messages]),
        json.dumps(call.choices) if call.choices is not None else None, call.sampling.model_dump_json(), call.text,
        pack_ints(call.prompt_token_ids), pack_ints(call.completion_token_ids), pack_floats(call.logprobs),
        call.logprob_mode, call.finish_reason, call.latency_s,
        call.usage.prompt_tokens if call.usage else None, call.usage.completion_tokens if call.usage else None,
        json.dumps(call.parsed) if call.parsed is not None else None, call.error, call.queue_s,
    )  # fmt: skip


def call_from_row(row: sqlite3.Row) -> LLMCall:
    usage = None
    if row["prompt_tokens"] is not None:
        usage = {"prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"]}
    return LLMCall.model_validate(
        {
            "role": row["role"], "purpose": row["purpose"], "node": row["node"], "round": row["round"],
            "model_id": row["model_id"], "adapter": row["adapter"], "weight_version": row["weight_version"],
            "messages": json.loads(row["messages"]),
            "choices": json.loads(row["choices"]) if row["choices"] else None,
            "sampling": json.loads(row["sampling"]), "text": row["text"],
            "prompt_token_ids": unpack_ints(row["prompt_ids"]),
            "completion_token_ids": unpack_ints(row["completion_ids"]),
            "logprobs": unpack_floats(row["logprobs"]), "logprob_mode": row["logprob_mode"],
            "finish_reason": row["finish_reason"], "latency_s": row["latency_s"], "queue_s": row["queue_s"],
            "usage": usage,
            "parsed": json.loads(row["parsed"]) if row["parsed"] else None, "error": row["error"],
        }
    )  # fmt: skip


def thumbnail_jpeg(image: PreparedImage) -> bytes:
    picture = Image.open(io.BytesIO(image.png_bytes))
    picture.thumbnail(THUMBNAIL_SIZE, Image.Resampling.BILINEAR, reducing_gap=2.0)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()
