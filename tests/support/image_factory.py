"""Encode PIL images to bytes the way files on disk would hold them."""

import io

from PIL import Image


def png_bytes(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()
