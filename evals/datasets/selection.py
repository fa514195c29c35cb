"""Which items of a dataset are used: hashed train/test splits, unique ids, a seeded and image-checked sample."""

from __future__ import annotations

import hashlib
import os
import random
from concurrent.futures import ThreadPoolExecutor

from emo_r3.evals.datasets.files import describe_image, image_problem
from emo_r3.evals.datasets.reading import DatasetError
from emo_r3.evals.items import EvalItem

# Share of items that a hashed split puts in `train` (the rest is `test`).
TRAIN_PERCENT = 80
HASHED_SPLITS = ("all", "train", "test")


def hash_bucket(item_id: str) -> int:
    """0..99 from the SHA-256 of the id: fixed per item, independent of the seed and of the other items."""
    return int.from_bytes(hashlib.sha256(item_id.encode("utf-8")).digest()[:8], "big") % 100


def hashed_split(kind: str, items: list[EvalItem], split: str | None) -> tuple[str, list[EvalItem]]:
    """Split a dataset without an official split: `all` (default), `train` (80 % by hashed id) or `test` (20 %)."""
    name = (split or "all").strip().lower()
    if name not in HASHED_SPLITS:
        raise DatasetError(
            f"{kind} has no official split, so split {split!r} does not exist: use one of {list(HASHED_SPLITS)} "
            f"(train/test = {TRAIN_PERCENT}/{100 - TRAIN_PERCENT} by a hash of the item id)"
        )
    if name == "all":
        return name, items
    in_train = name == "train"
    return name, [item for item in items if (hash_bucket(item.id) < TRAIN_PERCENT) == in_train]


def drop_duplicate_ids(items: list[EvalItem]) -> tuple[list[EvalItem], list[str]]:
    """Keep the first item of each id: two items under one id would make scores and traces ambiguous."""
    seen: dict[str, EvalItem] = {}
    skipped = []
    for item in items:
        if item.id in seen:
            skipped.append(f"{item.id}: duplicate id (an earlier item already uses it)")
        else:
            seen[item.id] = item
    return list(seen.values()), skipped


def select(items: list[EvalItem], *, limit: int | None, seed: int, verify: bool) -> tuple[list[EvalItem], list[str]]:
    """Check images and take at most `limit` good items: a seeded random sample, returned sorted by id.

    The pool is put in seeded random order (`random.Random(seed).sample`) and walked until `limit` items pass the
    image check, so a bad image is replaced by the next one in that order and only inspected images are
    reported. Checks run in a small thread pool (PIL releases the GIL while decoding); order stays deterministic.
    """
    pool = sorted(items, key=lambda item: item.id)
    if limit is not None and limit < len(pool):
        pool = random.Random(seed).sample(pool, len(pool))
    kept: list[EvalItem] = []
    skipped: list[str] = []
    position = 0
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as executor:
        while position < len(pool) and (limit is None or len(kept) < limit):
            wanted = len(pool) if limit is None else limit - len(kept)
            batch = pool[position : position + wanted]
            position += len(batch)
            problems = executor.map(lambda item: image_problem(item.image, verify=verify), batch)
            for item, problem in zip(batch, problems, strict=True):
                if problem is None:
                    kept.append(item)
                else:
                    skipped.append(f"{describe_image(item)}: {problem}")
    return sorted(kept, key=lambda item: item.id), skipped
