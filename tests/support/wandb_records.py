"""What an offline W&B run wrote: the records of its `run-<id>.wandb` file, decoded with W&B's own protobuf schema.

W&B 0.31 ships no Python reader for these files any more (its Go core writes them), so the framing is read here: a
7-byte header (`:W&B`, magic 0xBEE1, version 0), then LevelDB log blocks of 32 KiB whose chunks carry a 7-byte header
(checksum, length, type: full / first / middle / last), a block's tail under 7 bytes being padding."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """One offline run folder: the run record, the config it was sent, and its history rows by step."""

    run: pb.RunRecord
    config: dict[str, object] = field(default_factory=dict)
    history: list[tuple[int, dict[str, object]]] = field(default_factory=list)


def records(path: Path) -> Iterator[pb.Record]:
    data = path.read_bytes()
    ident, magic, version = HEADER.unpack_from(data)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a W&B transaction log"
    position, pending = HEADER.size, b""
    while position + CHUNK.size <= len(data):
        if BLOCK - position % BLOCK < CHUNK.size:
            position += BLOCK - position % BLOCK
            continue
        _, length, kind = CHUNK.unpack_from(data, position)
        if kind == 0:  # zero fill past the last record
            break
        start = position + CHUNK.size
        pending += data[start : start + length]
        position = start + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def offline_run(folder: Path) -> OfflineRun:
    """The run in `folder` (`offline-run-<time>-<id>`), its config updates and history rows (`_step` → values)."""
    (log,) = folder.glob("run-*.wandb")
    run: OfflineRun | None = None
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = OfflineRun(record.run)
            run.config.update(_items(record.run.config.update))
        elif kind == "config" and run is not None:
            run.config.update(_items(record.config.update))
        elif kind == "history" and run is not None:
            row = _items(record.history.item)
            run.history.append((int(row.pop("_step")), row))
    assert run is not None, f"{log} has no run record"
    return run


def _items(items: Iterable[pb.ConfigItem] | Iterable[pb.HistoryItem]) -> dict[str, object]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}
