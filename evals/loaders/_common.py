"""What every layout shares: image discovery, cheap image checks, label matching, splits, and seeded sampling."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from agents.images import ImageError, check_decode_budget, pil_errors
from evals.items import EvalItem
from prompts.label_sets import BUILTIN_LABEL_SETS, MIKELS_8, LabelSet, get_label_set

# Real dataset folders also hold Thumbs.db, .DS_Store, READMEs and macOS `._x.jpg` forks: only these count as images.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
# Folders that archive tools leave behind and that never hold dataset images.
_IGNORED_DIRS = frozenset({"__MACOSX"})
# Share of items that a hashed split puts in `train` (the rest is `test`).
TRAIN_PERCENT = 80
HASHED_SPLITS = ("all", "train", "test")


class DatasetError(ValueError):
    """A dataset that cannot be read at all (wrong path, wrong layout, unknown split); never a single bad item."""


@dataclass
class Read:
    """What a layout reader found: items with normalised labels, what it skipped, and optional late enrichment.

    `finish` runs only on the items that survive splitting, sampling and image checks, so costly per-item work
    (EmoSet's annotation files) is not paid for the thousands of items a `limit` throws away.
    """

    label_set: str
    items: list[EvalItem]
    skipped: list[str] = field(default_factory=list)
    split: str | None = None
    finish: Callable[[EvalItem], None] | None = None


# ---------------------------------------------------------------------------------------------- files and images


def is_image_file(path: Path) -> bool:
    """An image by its extension (any case), excluding hidden files such as macOS `._photo.jpg` resource forks."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def iter_files(folder: Path) -> Iterator[Path]:
    """Every non-hidden file under `folder`, in a sorted, platform-independent order (for deterministic ids)."""
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _IGNORED_DIRS)
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(current) / name


def iter_images(folder: Path) -> Iterator[Path]:
    """The image files under `folder` (recursively), stray non-image files silently left out."""
    return (path for path in iter_files(folder) if is_image_file(path))


def subfolders(folder: Path) -> list[Path]:
    """The visible sub-folders of `folder`, sorted by name."""
    visible = (p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in _IGNORED_DIRS)
    return sorted(p for p in visible if p.is_dir())


def relative_id(path: Path, root: Path) -> str:
    """A stable item id: the path relative to the dataset root, with forward slashes on every platform."""
    return path.relative_to(root).as_posix()


def image_problem(image: Path | bytes, *, verify: bool) -> str | None:
    """Why `image` cannot be used (missing, empty, not an image, corrupt, truncated, too large), or None if fine.

    Existence and size are always checked (a stat call). With `verify`, the image is parsed without the full
    cost of `prepare_image`: PNG chunks are walked and CRC-checked, JPEG is entropy-decoded at 1/8 scale (which
    still reaches the last byte, so truncation is caught), other formats are decoded. The messages match
    `prepare_image`'s, and so does the pixel budget, so an item that passes here will not fail there.
    """
    if isinstance(image, Path):
        try:
            size = image.stat().st_size
        except FileNotFoundError:
            return "image not found"
        except OSError as error:
            return f"image cannot be read ({error.strerror or error})"
        if not image.is_file():
            return "image path is not a file"
        if size == 0:
            return "the file is empty (0 bytes)"
    elif not image:
        return "the image bytes are empty"
    if not verify:
        return None
    try:
        _parse(image)
    except ImageError as error:
        return str(error)
    return None


def _parse(image: Path | bytes) -> None:
    source = io.BytesIO(image) if isinstance(image, bytes) else image
    # The same errors and pixel budget as prepare_image, so an image that passes here passes there too.
    with pil_errors(None), Image.open(source) as opened:
        check_decode_budget(opened, None)
        width, height = opened.size
        if opened.format == "PNG":
            opened.verify()
        elif opened.format == "JPEG":
            opened.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            opened.load()
        else:
            opened.load()


# --------------------------------------------------------------------------------------------------------- labels


def is_number(text: str) -> bool:
    """Whether a table cell holds a number (tells a header row from a data row)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def label_from_name(label_set: LabelSet, name: str) -> str | None:
    """Normalise a folder or file-name label; beyond `LabelSet.normalize`, accept a unique prefix of 3+ letters.

    Dataset folders abbreviate (`amuse`, `excite`); a free-text model answer never goes through this path.
    """
    label = label_set.normalize(name)
    if label:
        return label
    key = re.sub(r"[^a-z]", "", name.lower())
    if len(key) < 3:
        return None
    hits = [candidate for candidate in label_set.labels if candidate.startswith(key)]
    return hits[0] if len(hits) == 1 else None


def infer_label_set(answers: Iterable[str]) -> LabelSet:
    """The label set a column of answers comes from; Mikels-8 unless the answers clearly say otherwise.

    In order: a built-in set (Mikels-8 first) that contains every distinct answer verbatim; else one into which
    every answer normalises; else the built-in set that takes the most answers. Only when no answer fits any
    built-in set does the set become the custom set of the distinct answers (e.g. `positive,negative`).
    """
    distinct = sorted({" ".join(a.lower().split()) for a in answers if a and a.strip()})
    if not distinct:
        return MIKELS_8
    sets = list(BUILTIN_LABEL_SETS.values())
    for label_set in sets:
        if set(distinct) <= set(label_set.labels):
            return label_set
    counts = [sum(label_set.normalize(a) is not None for a in distinct) for label_set in sets]
    best = max(counts)
    if best == 0 and len(distinct) >= 2:
        return get_label_set(distinct)
    return sets[counts.index(best)]


# --------------------------------------------------------------------------------------------------------- splits


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


# ------------------------------------------------------------------------------------------------------ selection


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


def describe_image(item: EvalItem) -> str:
    """How a skipped item is named in reports: its id, plus the file when that differs from the id."""
    if isinstance(item.image, Path) and not item.image.as_posix().endswith(item.id):
        return f"{item.id} ({item.image})"
    return item.id
