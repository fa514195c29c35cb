"""Folder layouts: a folder per emotion (FI, UnbiasedEmo), and a flat folder labelled by file-name prefix (ArtPhoto)."""

from __future__ import annotations

import re
from pathlib import Path

from emo_r3.evals.datasets.files import is_image_file, iter_images, relative_id, subfolders
from emo_r3.evals.datasets.labels import label_from_name
from emo_r3.evals.datasets.reading import DatasetError, Read
from emo_r3.evals.items import EvalItem
from emo_r3.prompts.label_sets import MIKELS_8, PARROTT_6, LabelSet


def read_fi(root: Path, split: str | None) -> Read:
    """FI (Flickr & Instagram): `<emotion>/<image>` with Mikels-8 folder names in any case or abbreviation."""
    return _read_emotion_folders(root, MIKELS_8)


def read_unbiasedemo(root: Path, split: str | None) -> Read:
    """UnbiasedEmo: `<emotion>/<subject>/<image>` with Parrott-6 folder names; any depth below the emotion."""
    return _read_emotion_folders(root, PARROTT_6)


def _read_emotion_folders(root: Path, label_set: LabelSet) -> Read:
    base = _emotion_base(root, label_set)
    items: list[EvalItem] = []
    skipped = [f"{relative_id(p, root)}: not inside an emotion folder" for p in _top_level_images(base)]
    for folder in subfolders(base):
        label = label_from_name(label_set, folder.name)
        images = list(iter_images(folder))
        if label is None:
            if images:
                skipped.append(
                    f"{relative_id(folder, root)}/: folder name is not a {label_set.name} label "
                    f"({len(images)} images skipped)"
                )
            continue
        for path in images:
            item_id = relative_id(path, root)
            items.append(EvalItem(id=item_id, image=path, label=label, label_set=label_set.name))
    return Read(label_set=label_set.name, items=items, skipped=skipped)


def _emotion_base(root: Path, label_set: LabelSet) -> Path:
    """The folder holding the emotion folders: `root` itself, or a lone wrapper inside it (`FI/images/anger`)."""
    if not root.is_dir():
        raise DatasetError(f"{root}: expected a folder with one sub-folder per emotion")
    base = root
    for _ in range(3):  # root, then at most two lone wrapper folders
        folders = subfolders(base)
        if any(label_from_name(label_set, f.name) for f in folders):
            return base
        if len(folders) != 1:
            break
        base = folders[0]
    raise DatasetError(
        f"{root}: no sub-folder is named after a {label_set.name} emotion ({', '.join(label_set.labels)})"
    )


def _top_level_images(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.is_file() and is_image_file(p))


# A file name's label is what comes before the first underscore or digit: `sad_12.jpg`, `amusement1.jpg`.
_PREFIX = re.compile(r"[^_\d]+")


def read_artphoto(root: Path, split: str | None) -> Read:
    """ArtPhoto: a flat folder (sub-folders are tolerated) whose file names start with their Mikels-8 emotion."""
    if not root.is_dir():
        raise DatasetError(f"{root}: expected the ArtPhoto image folder")
    items: list[EvalItem] = []
    skipped: list[str] = []
    for path in iter_images(root):
        match = _PREFIX.match(path.stem)
        prefix = match.group(0).strip(" -.") if match else ""
        label = label_from_name(MIKELS_8, prefix) if prefix else None
        item_id = relative_id(path, root)
        if label is None:
            skipped.append(f"{item_id}: file-name prefix {prefix!r} is not a mikels8 label")
            continue
        items.append(EvalItem(id=item_id, image=path, label=label, label_set=MIKELS_8.name))
    if not items and not skipped:
        raise DatasetError(f"{root}: no image files found")
    return Read(label_set=MIKELS_8.name, items=items, skipped=skipped)
