"""Finding a dataset's images on disk and checking them cheaply, with the same errors and budget as image intake."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from emo_r3.agents.images import ImageError, check_decode_budget, pil_errors
from emo_r3.evals.items import EvalItem

# Real dataset folders also hold Thumbs.db, .DS_Store, READMEs and macOS `._x.jpg` forks: only these count as images.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
# Folders that archive tools leave behind and that never hold dataset images.
_IGNORED_DIRS = frozenset({"__MACOSX"})


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


def describe_image(item: EvalItem) -> str:
    """How a skipped item is named in reports: its id, plus the file when that differs from the id."""
    if isinstance(item.image, Path) and not item.image.as_posix().endswith(item.id):
        return f"{item.id} ({item.image})"
    return item.id
