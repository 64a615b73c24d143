"""decode_image: real photos and every awkward or broken file the dataset (or an upload) can contain."""

from __future__ import annotations

from pathlib import Path

import nasty_images as nasty
import pytest
from conftest import FIXTURES

from pawfinder.data.images import DecodedImage, ImageDecodeError, decode_image

LIMIT = 10_000_000
PHOTOS = sorted((FIXTURES / "photos").glob("*.jpg"))


def _decode(data: bytes, **kwargs: object) -> DecodedImage:
    return decode_image(data, max_pixels=LIMIT, **kwargs)  # type: ignore[arg-type]


def test_fixture_photos_are_small_and_decode() -> None:
    assert len(PHOTOS) >= 6
    for path in PHOTOS:
        assert path.stat().st_size <= 40_000
        decoded = decode_image(path, max_pixels=LIMIT)
        assert decoded.image.mode == "RGB"
        assert decoded.format == "JPEG"
        assert decoded.image.size == decoded.size


@pytest.mark.parametrize(
    ("make", "mode", "notes"),
    [
        (nasty.png_rgb, "RGB", []),
        (nasty.gif_animated, "P", ["palette", "animated"]),
        (lambda: nasty.png_palette(transparent=False), "P", ["palette"]),
        (lambda: nasty.png_palette(transparent=True), "P", ["palette", "rgba"]),
        (nasty.png_rgba_half_transparent, "RGBA", ["rgba"]),
        (nasty.jpeg_greyscale, "L", ["greyscale"]),
        (nasty.jpeg_cmyk, "CMYK", ["cmyk"]),
        (nasty.png_16bit_grey, "I;16", ["greyscale", "16bit"]),
        (nasty.png_16bit_rgb, "RGB", ["16bit"]),
        (nasty.heif, "RGB", []),
    ],
)
def test_awkward_but_valid_files_become_rgb(make, mode: str, notes: list[str]) -> None:
    decoded = _decode(make())
    assert decoded.image.mode == "RGB"
    assert decoded.mode == mode
    assert sorted(decoded.notes) == sorted(notes)
    assert decoded.image.size == decoded.size


def test_non_jpeg_data_under_jpg_name_is_noted(tmp_path: Path) -> None:
    for fmt, data in (("png", nasty.png_rgb()), ("gif", nasty.gif_animated())):
        path = tmp_path / f"Abyssinian_{fmt}.jpg"
        path.write_bytes(data)
        assert f"{fmt}_data_with_jpg_name" in decode_image(path, max_pixels=LIMIT).notes
    # the same bytes under an honest name carry no such note
    honest = tmp_path / "honest.png"
    honest.write_bytes(nasty.png_rgb())
    assert decode_image(honest, max_pixels=LIMIT).notes == []


def test_alpha_is_flattened_on_white() -> None:
    image = _decode(nasty.png_rgba_half_transparent()).image
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((40, 0)) == (255, 0, 0)


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    assert _decode(nasty.png_16bit_grey(65535)).image.getpixel((0, 0)) == (255, 255, 255)
    assert _decode(nasty.png_16bit_grey(32896)).image.getpixel((0, 0)) == (128, 128, 128)


def test_exif_orientation_is_applied() -> None:
    decoded = _decode(nasty.jpeg_exif_rotated(40, 20, orientation=6))
    assert decoded.size == (40, 20)  # as stored
    assert decoded.image.size == (20, 40)  # upright
    assert decoded.notes == ["exif_rotated"]


def test_draft_decodes_large_jpeg_smaller_but_not_below_request() -> None:
    decoded = _decode(nasty.jpeg_rgb(800, 600), draft_size=(128, 128))
    assert decoded.size == (800, 600)
    width, height = decoded.image.size
    assert 128 <= min(width, height) < 600


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"definitely not an image\n" * 10, "not_an_image"),
        (nasty.truncated_jpeg(), "truncated"),
        (nasty.png_rgb()[:40], "truncated"),
        (nasty.bomb_png(100_000, 100_000), "too_large"),  # beyond Pillow's own limit
        (nasty.bomb_png(4_000, 3_000), "too_large"),  # within Pillow's limit, beyond ours (12 M > 10 M)
        (nasty.ico(), "unsupported"),
    ],
)
def test_broken_files_raise_one_clear_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError) as caught:
        _decode(data)
    assert caught.value.reason == reason
    assert caught.value.message


def test_missing_path_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        decode_image(tmp_path / "nope.jpg", max_pixels=LIMIT)
