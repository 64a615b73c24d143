"""Generators of awkward and broken image files, for tests of decoding, verification and upload handling.

Every function returns the raw file bytes; write them under any name (e.g. ``.jpg`` to mimic the dataset's mislabelled
files). ``bomb_png(width, height)`` is a tiny PNG whose header claims an enormous size.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _gradient(width: int = 48, height: int = 32) -> np.ndarray:
    """A deterministic RGB uint8 test pattern (H, W, 3)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """Encode a Pillow image to bytes in ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg_rgb(width: int = 48, height: int = 32) -> bytes:
    return encode(Image.fromarray(_gradient(width, height)), "JPEG", quality=90)


def png_rgb() -> bytes:
    return encode(Image.fromarray(_gradient()), "PNG")


def gif_animated() -> bytes:
    frames = [Image.fromarray(_gradient()).convert("P"), Image.fromarray(255 - _gradient()).convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def png_palette(transparent: bool = False) -> bytes:
    image = Image.fromarray(_gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(image, "PNG", transparency=0) if transparent else encode(image, "PNG")


def png_rgba_half_transparent() -> bytes:
    """RGBA: left half fully transparent black, right half opaque red."""
    pixels = np.zeros((32, 48, 4), np.uint8)
    pixels[:, 24:] = (255, 0, 0, 255)
    return encode(Image.fromarray(pixels), "PNG")


def jpeg_greyscale() -> bytes:
    return encode(Image.fromarray(_gradient()[..., 0]), "JPEG")


def jpeg_cmyk() -> bytes:
    return encode(Image.fromarray(_gradient()).convert("CMYK"), "JPEG")


def png_16bit_grey(value: int = 65535) -> bytes:
    """A 16-bit greyscale PNG filled with ``value`` (0..65535)."""
    return encode(Image.fromarray(np.full((16, 16), value, np.uint16)), "PNG")


def png_raw(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written chunk by chunk (lets tests claim any header size, or 16-bit RGB)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def png_16bit_rgb() -> bytes:
    return png_raw(4, 4, 16, 2, b"".join(b"\x00" + b"\x80\x00" * 3 * 4 for _ in range(4)))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A ~60-byte PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    return png_raw(width, height, 8, 2, b"")


def jpeg_exif_rotated(width: int = 40, height: int = 20, orientation: int = 6) -> bytes:
    """A landscape JPEG whose EXIF says "rotate 90° clockwise to display" (orientation 6): upright it is portrait."""
    image = Image.fromarray(_gradient(width, height))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif.tobytes())


def truncated_jpeg() -> bytes:
    data = jpeg_rgb(200, 150)
    return data[: len(data) // 2]


def ico() -> bytes:
    """A valid image in a format we do not accept."""
    return encode(Image.fromarray(_gradient(32, 32)), "ICO")


def heif() -> bytes:
    return encode(Image.fromarray(_gradient(64, 48)), "HEIF", quality=90)
