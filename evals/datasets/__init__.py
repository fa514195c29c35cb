"""Dataset loaders for the visual-emotion benchmarks: one function, `load_dataset(kind, path)`, for every layout.

Every loader gives the same guarantees: labels normalised into the dataset's label set; inputs that cannot be
used (unknown label, missing/empty/corrupt image, malformed row, vote tie) reported in `skipped`, never fatal;
stray non-image files ignored; stable ids; items sorted by id; a `limit` taken as a seeded random sample.
Only a dataset that cannot be read at all (wrong path or layout, unknown split) raises `DatasetError`.

Kind `hf` reads Hugging Face datasets (hub names, `save_to_disk` folders, parquet folders; see `hf`), and
`from_hf_dataset` turns a `datasets.Dataset` in memory into the same `LoadedDataset`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from emo_r3.evals.datasets.abstract import read_abstract
from emo_r3.evals.datasets.emoset import read_emoset
from emo_r3.evals.datasets.emotion6 import read_emotion6
from emo_r3.evals.datasets.files import IMAGE_SUFFIXES, image_problem
from emo_r3.evals.datasets.folders import read_artphoto, read_fi, read_unbiasedemo
from emo_r3.evals.datasets.hf import HFColumns, hf_source, open_hf, read_hf_dataset
from emo_r3.evals.datasets.parquet import read_parquet
from emo_r3.evals.datasets.reading import DatasetError, Read
from emo_r3.evals.datasets.selection import (
    HASHED_SPLITS,
    TRAIN_PERCENT,
    drop_duplicate_ids,
    hash_bucket,
    hashed_split,
    select,
)
from emo_r3.evals.datasets.vecbench import read_vecbench
from emo_r3.evals.items import LoadedDataset

__all__ = [
    "DATASET_KINDS",
    "HASHED_SPLITS",
    "HF",
    "IMAGE_SUFFIXES",
    "TRAIN_PERCENT",
    "DatasetError",
    "DatasetSpecError",
    "HFColumns",
    "from_hf_dataset",
    "hash_bucket",
    "hf_source",
    "image_problem",
    "load_dataset",
    "parse_dataset_spec",
]

Reader = Callable[[Path, str | None], Read]

# kind -> (reader, whether the dataset lacks an official split and gets the hashed 80/20 one)
_LAYOUTS: dict[str, tuple[Reader, bool]] = {
    "emoset": (read_emoset, False),
    "parquet": (read_parquet, False),
    "fi": (read_fi, True),
    "unbiasedemo": (read_unbiasedemo, True),
    "emotion6": (read_emotion6, True),
    "artphoto": (read_artphoto, True),
    "abstract": (read_abstract, True),
    "vecbench": (read_vecbench, False),
}
HF = "hf"  # Hugging Face datasets: a source is a hub name or a local path, read by `hf`, not by a layout reader
DATASET_KINDS: tuple[str, ...] = (*_LAYOUTS, HF)


class DatasetSpecError(DatasetError):
    """A `KIND:PATH` dataset argument that does not parse or names an unknown kind."""


def parse_dataset_spec(spec: str) -> tuple[str, Path | str]:
    """Split a command-line `KIND:PATH` (e.g. `emoset:/data/EmoSet-118K`) into a known kind and a path; for `hf`,
    a local path becomes a Path and a hub name stays text (`hf:someone/emoset-mini:default`)."""
    kind, colon, rest = spec.partition(":")
    kind = kind.strip().lower()
    if not colon or not kind or not rest.strip():
        raise DatasetSpecError(
            f"dataset {spec!r} must be KIND:PATH, e.g. emoset:/data/EmoSet-118K; kinds: {', '.join(DATASET_KINDS)}"
        )
    _check_kind(kind)
    if kind == HF:
        source = hf_source(rest)
        return kind, source if isinstance(source, Path) else str(source)
    return kind, Path(rest.strip()).expanduser()


def load_dataset(
    kind: str,
    path: Path | str,
    *,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    verify_images: bool = True,
    columns: HFColumns | None = None,
) -> LoadedDataset:
    """Load one split of a dataset as `EvalItem`s sorted by id, with every skipped input and its reason.

    `split`: EmoSet `train`/`val`/`test` (default `test`); parquet a file-name split (default `test`, or the only
    one); `hf` the named split (default `test`, or the only one); datasets without an official split (FI,
    UnbiasedEmo, Emotion6, ArtPhoto, Abstract) take `all` (default) or `train`/`test`, a fixed 80/20 cut by a hash
    of the item id. `limit`: at most this many items, a `random.Random(seed)` sample. `verify_images`: parse every
    kept image (cheaply) so corrupt ones are skipped here rather than failing mid-evaluation; without it only
    missing and empty files are caught. `columns`: the image/label/text/id columns of an `hf` dataset.
    `path`: for `hf`, a Path is a local dataset and text is parsed by `hf.hf_source` (a hub name or a path).
    """
    kind = _check_kind(kind.strip().lower())
    _check_limit(limit)
    if kind == HF:
        source = hf_source(path)
        local = source.absolute() if isinstance(source, Path) else None
        # relative image paths in a local dataset are relative to its folder
        read = read_hf_dataset(open_hf(source, split), columns, local)
        return _loaded(kind, local or str(source), read, limit=limit, seed=seed, verify_images=verify_images)
    if columns is not None:
        raise DatasetError(f"column options are for hf datasets only; a {kind} dataset has a fixed layout")
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder (for dataset kind {kind!r})")
    reader, hashed = _LAYOUTS[kind]
    read = reader(path.absolute(), split)
    return _loaded(kind, path, read, hashed=hashed, split=split, limit=limit, seed=seed, verify_images=verify_images)


def from_hf_dataset(
    dataset: Any,
    *,
    columns: HFColumns | None = None,
    limit: int | None = None,
    seed: int = 0,
    verify_images: bool = True,
) -> LoadedDataset:
    """A `datasets.Dataset` in memory as a `LoadedDataset`, read exactly as an `hf:` dataset is (columns, labels,
    ids, skipped rows, `limit` sample); relative image paths resolve against the working directory."""
    _check_limit(limit)
    read = read_hf_dataset(dataset, columns)
    return _loaded(HF, "<memory>", read, limit=limit, seed=seed, verify_images=verify_images)


def _loaded(
    kind: str,
    path: Path | str,
    read: Read,
    *,
    hashed: bool = False,
    split: str | None = None,
    limit: int | None,
    seed: int,
    verify_images: bool,
) -> LoadedDataset:
    """What every loader does after reading: unique ids, the hashed `split` of a dataset without an official one
    (`hashed`), the seeded image-checked sample, late enrichment."""
    items, duplicates = drop_duplicate_ids(read.items)
    split_name = read.split
    if hashed:
        split_name, items = hashed_split(kind, items, split)
    items, bad_images = select(items, limit=limit, seed=seed, verify=verify_images)
    if read.finish is not None:
        for item in items:
            read.finish(item)
    return LoadedDataset(
        kind=kind,
        path=path,
        split=split_name,
        label_set=read.label_set,
        items=items,
        skipped=[*read.skipped, *duplicates, *bad_images],
    )


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise DatasetError(f"limit must be >= 0, got {limit}")


def _check_kind(kind: str) -> str:
    if kind not in DATASET_KINDS:
        raise DatasetSpecError(f"unknown dataset kind {kind!r}: use one of {', '.join(DATASET_KINDS)}")
    return kind
