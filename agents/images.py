"""Image intake: decode, refuse bombs, normalise every mode to 8-bit RGB, and fit a pixel budget."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import re
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, PrivateAttr

# Above this many pixels we refuse to decode at all (a 40k x 40k PNG is a few KB on disk and 4.8 GB in RAM).
MAX_DECODE_PIXELS = 64_000_000
# What the graph hands to models: larger images are downscaled to this many pixels (aspect kept).
DEFAULT_MAX_PIXELS = 2048 * 2048


class ImageError(ValueError):
    """An input that cannot be used as an image; the message says which input and why."""


class PreparedImage(BaseModel):
    """An RGB image ready for a model. Serialises as its content hash and size; the pixels stay in memory."""

    model_config = ConfigDict(frozen=True)

    sha256: str
    width: int
    height: int
    source: str | None = None
    _png: bytes = PrivateAttr(default=b"")

    @property
    def png_bytes(self) -> bytes:
        return self._png

    @classmethod
    def from_png(cls, png: bytes, *, source: str | None = None) -> PreparedImage:
        """An image back from the PNG bytes `prepare_image` made (e.g. out of a checkpoint); the hash is checked."""
        digest = hashlib.sha256(png).hexdigest()
        with pil_errors(source), Image.open(io.BytesIO(png)) as opened:
            width, height = opened.size
        image = cls(sha256=digest, width=width, height=height, source=source)
        image._png = png
        return image

    def to_pil(self) -> Image.Image:
        return Image.open(io.BytesIO(self._png)).convert("RGB")


def prepare_image(
    data: bytes | str | Path | Image.Image,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_pixels: int = MAX_DECODE_PIXELS,
) -> PreparedImage:
    """Load an image from a path, bytes or a PIL image and return it as 8-bit RGB within `max_pixels`.

    Raises ImageError for missing, empty, corrupt, truncated or oversized inputs.
    """
    inline = _inline_image(data) if isinstance(data, str) else None
    if inline is not None:  # a data URL or base64 text (JSON inputs): bytes, not a path
        data = inline
    source = str(data) if isinstance(data, str | Path) else None
    image = data if isinstance(data, Image.Image) else _decode(data, source, max_decode_pixels)
    rgb = _to_rgb(image)
    rgb = _fit(rgb, max_pixels)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    png = buffer.getvalue()
    prepared = PreparedImage(sha256=hashlib.sha256(png).hexdigest(), width=rgb.width, height=rgb.height, source=source)
    prepared._png = png
    return prepared


_DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,", re.IGNORECASE)
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/\s]{64,}={0,2}\s*")
# What an image file starts with (PNG, JPEG, GIF, WebP's RIFF, BMP, TIFF both ways): base64 text that decodes to
# anything else is not taken for an image, so a long odd file name is never misread as pixels.
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")


def _inline_image(text: str) -> bytes | None:
    """The bytes of a `data:image/...;base64,` URL or of plain base64 text holding an image; None for a path."""
    url = _DATA_URL.match(text)
    if url is not None:
        try:
            return base64.b64decode(text[url.end() :], validate=True)
        except binascii.Error as error:
            raise ImageError(f"a data URL whose base64 payload cannot be decoded ({error})") from error
    if not _BASE64_TEXT.fullmatch(text):
        return None
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except binascii.Error:
        return None
    return data if data.startswith(_IMAGE_MAGIC) else None


def _decode(data: bytes | str | Path, source: str | None, max_decode_pixels: int) -> Image.Image:
    name = source or "image bytes"
    if isinstance(data, bytes):
        if not data:
            raise ImageError(f"{name}: the file is empty (0 bytes)")
        return _load(io.BytesIO(data), name, max_decode_pixels)
    path = Path(data)
    _check_file(path, name, max_file_bytes(max_decode_pixels))
    try:
        with path.open("rb") as handle:  # PIL reads the header first: a non-image is refused without reading it all
            return _load(handle, name, max_decode_pixels)
    except OSError as error:  # opened after the check: gone or unreadable meanwhile
        raise ImageError(f"{name}: cannot be read ({error.strerror or error})") from error


def max_file_bytes(max_decode_pixels: int) -> int:
    """The largest file that can hold an image within the decode budget: 8 bytes a pixel (16-bit RGBA, uncompressed)
    plus room for metadata. Anything larger is not worth reading to find out it is no image."""
    return 8 * max_decode_pixels + (1 << 20)


def _check_file(path: Path, name: str, limit: int) -> None:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except OSError as error:  # a symlink loop, a permission problem, a name too long
        raise ImageError(f"{name}: cannot be read ({error.strerror or error})") from error
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{name}: not a regular file")
    if info.st_size == 0:
        raise ImageError(f"{name}: the file is empty (0 bytes)")
    if info.st_size > limit:
        raise ImageError(
            f"{name}: {info.st_size:,} bytes, more than any image within the decode budget can take ({limit:,}); "
            "not read"
        )


def _load(stream: BinaryIO, name: str, max_decode_pixels: int) -> Image.Image:
    with pil_errors(name):
        image = Image.open(stream)
        check_decode_budget(image, name, max_decode_pixels)
        image.seek(0)  # animated images: the first frame stands for the picture
        image.load()
    return image


@contextmanager
def pil_errors(name: str | None) -> Iterator[None]:
    """Turn PIL's decoding failures (and its bomb warning) into an ImageError that names the input (if given)."""
    prefix = f"{name}: " if name else ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{prefix}refused as a decompression bomb ({error})") from error
    except UnidentifiedImageError as error:
        raise ImageError(f"{prefix}not an image file (unrecognised format)") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"{prefix}corrupt or truncated image ({error})") from error


def check_decode_budget(image: Image.Image, name: str | None, max_decode_pixels: int = MAX_DECODE_PIXELS) -> None:
    """Refuse an opened (not yet decoded) image whose header promises more pixels than the budget."""
    width, height = image.size
    if width * height > max_decode_pixels:
        prefix = f"{name}: " if name else ""
        raise ImageError(
            f"{prefix}{width}x{height} is {width * height:,} pixels, over the decode budget of "
            f"{max_decode_pixels:,}; downscale it first or raise max_decode_pixels"
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit integer or float greyscale: rescale the actual range to 0..255 instead of clipping (a 0..1 float
        # image would otherwise come out black, a 16-bit one white).
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype("uint8"), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # Composite transparency on white, the way a viewer would see it on a page.
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def _fit(image: Image.Image, max_pixels: int) -> Image.Image:
    pixels = image.width * image.height
    if pixels <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / pixels)
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)
