"""Decode any photo into an upright RGB Pillow image, or fail with one clear reason.

This is the ONE decoder used by `data verify`, `data prepare`, evaluation and serving, so that a photo is read the
same way everywhere: EXIF orientation applied, alpha flattened on white, palette/greyscale/CMYK/16-bit converted to
8-bit RGB. Oversized images are rejected from their header, before any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

pillow_heif.register_heif_opener()
Image.init()

DecodeFailure = Literal["empty", "not_an_image", "truncated", "too_large", "unsupported"]

#: Formats we accept. Pillow can open more (EPS, PSD, ICO, ...), but photos never need them.
SUPPORTED_FORMATS: tuple[str, ...] = tuple(
    fmt for fmt in ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "HEIF", "AVIF") if fmt in Image.OPEN
)
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
#: File signatures of the supported formats: data that starts like this but will not open is broken, not "not an image".
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")
_EXIF_ORIENTATION = 0x0112
_WHITE = (255, 255, 255)


class ImageDecodeError(ValueError):
    """A photo that cannot be used; ``reason`` is one of ``DecodeFailure``, ``message`` explains it."""

    def __init__(self, reason: DecodeFailure, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: DecodeFailure = reason
        self.message = message


@dataclass
class DecodedImage:
    """An upright 8-bit RGB image plus what the source looked like.

    ``notes`` name every conversion that was needed: ``<format>_data_with_jpg_name`` (e.g. PNG data in a ``.jpg``
    file), ``palette``, ``rgba`` (had an alpha channel, flattened on white), ``greyscale``, ``cmyk``, ``16bit``,
    ``exif_rotated``, ``animated`` (first frame used), ``bad_exif`` (unreadable EXIF, orientation left as stored).
    """

    image: Image.Image
    format: str
    mode: str
    size: tuple[int, int]
    notes: list[str] = field(default_factory=list)


def decode_image(source: bytes | Path, *, max_pixels: int, draft_size: tuple[int, int] | None = None) -> DecodedImage:
    """Decode ``source`` (raw bytes or a file path) into an upright RGB image.

    ``max_pixels`` rejects decompression bombs (reason ``too_large``) from the header alone. ``draft_size`` lets
    JPEG decoding scale down by 1/2, 1/4 or 1/8 while keeping both sides >= ``draft_size`` (in stored orientation),
    which is much faster when the caller resizes anyway; ``size`` still reports the original dimensions.
    Raises ``ImageDecodeError``; a missing path raises ``FileNotFoundError``.
    """
    data = source.read_bytes() if isinstance(source, Path) else source
    if not data:
        raise ImageDecodeError("empty", "the file is empty (0 bytes)")
    image = _open(data, max_pixels)
    fmt = str(image.format)
    notes: list[str] = []
    if isinstance(source, Path) and source.suffix.lower() in _JPEG_SUFFIXES and fmt not in _JPEG_FORMATS:
        notes.append(f"{fmt.lower()}_data_with_jpg_name")
    original_mode, original_size = image.mode, image.size
    notes.extend(_mode_notes(image))
    if getattr(image, "n_frames", 1) > 1:
        notes.append("animated")
    if draft_size is not None and fmt in _JPEG_FORMATS:
        image.draft(None, draft_size)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageDecodeError("truncated", f"pixel data is truncated or corrupt ({err})") from err
    upright = _exif_transpose(image, notes)
    return DecodedImage(image=_to_rgb(upright), format=fmt, mode=original_mode, size=original_size, notes=notes)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Identify the format and read the header; reject unknown, unsupported and oversized images."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as err:
        raise ImageDecodeError("too_large", f"the header claims a decompression-bomb size ({err})") from err
    except UnidentifiedImageError as err:
        if data.startswith(_SIGNATURES) or data[8:12] == b"WEBP":
            raise ImageDecodeError("truncated", "the data starts like an image but its header is broken") from err
        other = _identify_any_format(data)
        if other is not None:
            raise ImageDecodeError("unsupported", f"{other} images are not accepted") from err
        raise ImageDecodeError("not_an_image", "the data is not a recognised image format") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageDecodeError("truncated", f"the image header is truncated or corrupt ({err})") from err
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError("truncated", f"the header claims an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too_large", f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}"
        )
    return image


def _identify_any_format(data: bytes) -> str | None:
    """The format name if Pillow recognises ``data`` as some image we do not accept (header only)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data)).format
    except Exception:  # any failure here just means "not an image we know"
        return None


def _mode_notes(image: Image.Image) -> list[str]:
    """Notes describing a pixel mode that needs conversion to 8-bit RGB (call before ``load()``: it reads the tiles)."""
    mode = image.mode
    notes = []
    if mode in ("P", "PA"):
        notes.append("palette")
    if mode in ("L", "LA", "1", "I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        notes.append("greyscale")
    if mode == "CMYK":
        notes.append("cmyk")
    if mode in _SIXTEEN_BIT_MODES or any(";16" in str(tile.args) for tile in getattr(image, "tile", ()) or ()):
        notes.append("16bit")
    if _has_alpha(image):
        notes.append("rgba")
    return notes


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (image.mode == "P" and "transparency" in image.info)


def _exif_transpose(image: Image.Image, notes: list[str]) -> Image.Image:
    """Apply the EXIF orientation tag; unreadable EXIF leaves the image as stored and adds ``bad_exif``."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation in range(2, 9):
            notes.append("exif_rotated")
            return ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF blocks raise many different errors inside Pillow
        notes.append("bad_exif")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to 8-bit RGB: alpha flattened on white, 16-bit scaled down (not clipped)."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        scale = 257.0 if image.mode != "F" else (1 / 255 if pixels.max(initial=0) <= 1.0 else 1.0)
        image = Image.fromarray(np.clip(pixels / scale, 0, 255).round().astype(np.uint8))
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
