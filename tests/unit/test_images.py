"""Image intake: every awkward real-world file either becomes 8-bit RGB or a clear ImageError."""

import io
import resource

import numpy as np
import pytest
from image_factory import png_bytes
from PIL import Image

from emo_r3.agents.images import ImageError, prepare_image


def test_rgb_png_round_trip_and_hash_is_content_based(noise_image):
    first, second = prepare_image(noise_image), prepare_image(noise_image.read_bytes())
    assert (first.width, first.height) == (64, 48)
    assert first.sha256 == second.sha256
    assert first.to_pil().mode == "RGB"
    assert set(first.model_dump()) == {"sha256", "width", "height", "source"}


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("CMYK", (20, 10), (0, 255, 0, 0)),
        lambda: Image.new("P", (20, 10)),
        lambda: Image.new("RGBA", (20, 10), (255, 0, 0, 0)),
        lambda: Image.new("LA", (20, 10)),
        lambda: Image.new("L", (20, 10), 200),
        lambda: Image.new("1", (20, 10)),
        lambda: Image.fromarray(np.linspace(0, 65535, 200, dtype=np.uint16).reshape(10, 20)),
    ],
    ids=["cmyk", "palette", "alpha", "la", "grey", "bilevel", "16bit"],
)
def test_modes_are_normalised_to_rgb(make):
    image = make()
    fmt = "TIFF" if image.mode in ("CMYK", "I;16") else "PNG"
    prepared = prepare_image(png_bytes(image, fmt))
    rgb = prepared.to_pil()
    assert rgb.mode == "RGB" and rgb.size == (20, 10)


def test_transparent_pixels_become_white_and_16bit_keeps_contrast():
    transparent = prepare_image(png_bytes(Image.new("RGBA", (4, 4), (255, 0, 0, 0)))).to_pil()
    assert transparent.getpixel((0, 0)) == (255, 255, 255)
    ramp = Image.fromarray(np.linspace(0, 1000, 200, dtype=np.uint16).reshape(10, 20))
    grey = np.asarray(prepare_image(png_bytes(ramp, "TIFF")).to_pil())
    assert grey.min() == 0 and grey.max() == 255  # a 0..1000 range is stretched, not clipped to black


@pytest.mark.parametrize(
    "ramp",
    [
        np.linspace(0, 65535, 200).astype(np.uint16),
        np.linspace(0, 1000, 200).astype(np.uint16),
        np.linspace(-70000, 70000, 200).astype(np.int32),
        np.linspace(0.0, 1.0, 200).astype(np.float32),
        np.linspace(-5.0, 5.0, 200).astype(np.float32),
    ],
    ids=["16bit-full", "16bit-low", "32bit-int", "float-0..1", "float-signed"],
)
def test_high_bit_depth_greyscale_keeps_its_contrast(ramp):
    """16-bit, 32-bit integer and 32-bit float (mode F) files: the actual range is stretched over 0..255."""
    image = Image.fromarray(ramp.reshape(10, 20))
    grey = np.asarray(prepare_image(png_bytes(image, "TIFF")).to_pil())[..., 0]
    assert grey.min() == 0 and grey.max() == 255
    assert (np.diff(grey.reshape(-1).astype(int)) >= 0).all()  # the ramp stays a ramp


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert prepare_image(buffer.getvalue()).to_pil().getpixel((0, 0))[0] > 200


def test_large_images_are_downscaled_into_the_budget():
    prepared = prepare_image(png_bytes(Image.new("RGB", (400, 300))), max_pixels=100 * 100)
    assert prepared.width * prepared.height <= 100 * 100
    assert abs(prepared.width / prepared.height - 4 / 3) < 0.05


def test_decompression_bomb_is_refused_before_decoding():
    bomb = png_bytes(Image.new("1", (9000, 9000)))  # a few KB on disk, 81 Mpx
    with pytest.raises(ImageError, match="decode budget"):
        prepare_image(bomb)


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "empty"), (b"hello, I am text", "not an image"), (None, "no such file")],
    ids=["zero-byte", "not-image", "missing"],
)
def test_unusable_inputs_raise_clear_errors(data, message, tmp_path):
    path = tmp_path / "input.jpg"
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(ImageError, match=message) as info:
        prepare_image(path)
    assert str(path) in str(info.value)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize(
    ("size", "message"),
    [(3 * 2**30, "not read"), (300 * 2**20, "not an image")],
    ids=["3 GB, over any image", "300 MB of zeros"],
)
def test_huge_non_images_are_refused_without_reading_them(tmp_path, size, message):
    """Sparse files: no disk used, but reading one whole would take `size` bytes of memory."""
    path = tmp_path / "huge.jpg"
    with path.open("wb") as handle:
        handle.truncate(size)
    before = _peak_rss_mb()
    with pytest.raises(ImageError, match=message):
        prepare_image(path)
    assert _peak_rss_mb() - before < 100


def test_a_symlink_loop_is_a_clear_error(tmp_path):
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    with pytest.raises(ImageError, match="symbolic links"):
        prepare_image(loop)


def test_truncated_jpeg_is_a_clear_error(bundled_images):
    data = bundled_images["grace_hopper"].read_bytes()
    with pytest.raises(ImageError, match="corrupt or truncated"):
        prepare_image(data[: len(data) // 3])
