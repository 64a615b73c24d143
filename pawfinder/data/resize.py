"""Turn one source photo into one cached, upright RGB JPEG whose short side is at most ``short_side``.

The worker of `data prepare`: kept free of pandas so that worker processes start fast.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from pawfinder.data.images import ImageDecodeError, decode_image

CACHE_JPEG_QUALITY = 95


@dataclass(frozen=True)
class CacheTask:
    """Decode ``source`` and write ``target`` (picklable for worker processes)."""

    image: str
    source: Path
    target: Path
    short_side: int
    max_pixels: int


@dataclass
class CacheResult:
    """What happened to one image; ``reason``/``message`` are set when it could not be used."""

    image: str
    ok: bool
    reason: str | None = None
    message: str | None = None
    sha256: str = ""
    width: int = 0
    height: int = 0
    source_width: int = 0
    source_height: int = 0
    source_size: int = 0
    source_mtime_ns: int = 0
    notes: list[str] = field(default_factory=list)


def resized_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """Scale ``size`` so that its short side is ``short_side``; never upscale."""
    width, height = size
    shortest = min(width, height)
    if shortest <= short_side:
        return size
    scale = short_side / shortest
    return (
        short_side if width == shortest else round(width * scale),
        short_side if height == shortest else round(height * scale),
    )


def cache_image(task: CacheTask) -> CacheResult:
    """Validate, orient, convert and resize one image into the cache; never raises for bad image data.

    A JPEG that already fits and needs no conversion is copied byte for byte (no second JPEG generation loss).
    """
    try:
        stat = task.source.stat()
        data = task.source.read_bytes()
        decoded = decode_image(task.source, max_pixels=task.max_pixels, draft_size=(task.short_side, task.short_side))
    except FileNotFoundError:
        return CacheResult(task.image, ok=False, reason="missing", message=f"{task.source} does not exist")
    except ImageDecodeError as err:
        return CacheResult(task.image, ok=False, reason=err.reason, message=err.message)
    target_size = resized_size(decoded.image.size, task.short_side)
    task.target.parent.mkdir(parents=True, exist_ok=True)
    partial = task.target.with_name(f".{task.target.name}.{os.getpid()}.part")
    if decoded.format == "JPEG" and not decoded.notes and decoded.image.size == decoded.size == target_size:
        partial.write_bytes(data)
    else:
        image = decoded.image
        if image.size != target_size:
            image = image.resize(target_size, Image.Resampling.LANCZOS)
        image.save(partial, "JPEG", quality=CACHE_JPEG_QUALITY)
    partial.replace(task.target)
    return CacheResult(
        image=task.image,
        ok=True,
        sha256=hashlib.sha256(data).hexdigest(),
        width=target_size[0],
        height=target_size[1],
        source_width=decoded.size[0],
        source_height=decoded.size[1],
        source_size=stat.st_size,
        source_mtime_ns=stat.st_mtime_ns,
        notes=decoded.notes,
    )
