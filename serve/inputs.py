"""Reading uploads safely: size limits enforced while streaming, multipart parsing, decoding into an upright RGB image.

Every refusal is an :class:`InputRejected` carrying the HTTP status, a short machine ``reason`` (used as a metrics
label) and a ``detail`` sentence for people. Nothing here lets bad input turn into a 5xx.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from pawfinder.data.images import ImageDecodeError, decode_image
from pawfinder.settings import Settings

logger = logging.getLogger(__name__)

#: Room for multipart boundaries and part headers on top of the file-size limit.
ENVELOPE_BYTES = 64 * 1024

_DECODE_STATUS = {"empty": 422, "truncated": 422, "not_an_image": 415, "unsupported": 415, "too_large": 413}


class InputRejected(Exception):
    """A request we refuse; ``status`` is a 4xx code, ``detail`` tells the caller what to change."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


class _BodyTooLarge(Exception):
    pass


@dataclass(frozen=True)
class Upload:
    """One uploaded file, fully read (it is known to be within the size limit)."""

    filename: str
    data: bytes


@dataclass(frozen=True)
class UploadedImage:
    """A decoded upload: the (possibly reduced) RGB image plus what the original file was."""

    image: Image.Image
    filename: str
    sha256: str
    num_bytes: int
    format: str
    width: int
    height: int
    data: bytes


def _too_large(limit: int) -> InputRejected:
    return InputRejected(413, "too_large", f"the upload exceeds the limit of {limit:,} bytes; send a smaller photo")


async def _capped(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """Pass the body through, failing as soon as more than ``limit`` bytes arrive (the rest is never read)."""
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > limit:
            raise _BodyTooLarge
        yield chunk


async def read_files(request: Request, *, field: str, max_bytes: int, max_files: int) -> list[Upload]:
    """The files posted as multipart form field ``field``; at most ``max_files`` of at most ``max_bytes`` each.

    The whole body may hold ``max_bytes`` plus a small envelope: a larger declared ``Content-Length`` is refused
    before reading anything, and an undeclared (chunked) body is refused as soon as it grows past the limit.
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise InputRejected(
            415,
            "not_multipart",
            f"send the photo as multipart/form-data in the form field {field!r}, e.g. "
            f"curl -F '{field}=@photo.jpg' (got content type {content_type or 'none'!r})",
        )
    limit = max_bytes + ENVELOPE_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(max_bytes)
    parser = MultiPartParser(
        request.headers, _capped(request.stream(), limit), max_files=max_files, max_fields=max_files
    )
    try:
        form = await parser.parse()
    except _BodyTooLarge:
        raise _too_large(max_bytes) from None
    except MultiPartException as err:
        reason = "too_many_files" if "Too many" in err.message else "bad_multipart"
        raise InputRejected(422, reason, f"the multipart form cannot be used: {err.message}") from None
    except ClientDisconnect:
        raise InputRejected(400, "client_disconnected", "the upload was interrupted by the client") from None
    try:
        return await _collect(form.multi_items(), field=field, max_bytes=max_bytes)
    finally:
        await form.close()


async def _collect(items: list[tuple[str, UploadFile | str]], *, field: str, max_bytes: int) -> list[Upload]:
    files = [value for name, value in items if name == field and isinstance(value, UploadFile)]
    if not files:
        received = sorted({name for name, _ in items}) or ["none"]
        raise InputRejected(
            422,
            "missing_file",
            f"no file in form field {field!r} (received fields: {', '.join(received)}); "
            f"e.g. curl -F '{field}=@photo.jpg'",
        )
    uploads = []
    for upload in files:
        if upload.size is not None and upload.size > max_bytes:
            raise _too_large(max_bytes)
        uploads.append(Upload(filename=upload.filename or "", data=await upload.read()))
    return uploads


def decode_upload(upload: Upload, settings: Settings) -> UploadedImage:
    """Decode an upload with the project's one decoder (EXIF, HEIC, CMYK, 16-bit, alpha ...) and check its shape.

    Large images come back reduced by an integer factor (JPEG draft mode, then box reduction) so that the short side
    stays at least ``settings.serve_draft_size``; the model's own preprocessing does the exact resize afterwards.
    """
    draft = settings.serve_draft_size
    try:
        decoded = decode_image(upload.data, max_pixels=settings.max_image_pixels, draft_size=(draft, draft))
    except ImageDecodeError as err:
        raise InputRejected(_DECODE_STATUS.get(err.reason, 422), err.reason, _decode_detail(err)) from None
    except Exception as err:  # hostile files can trip any error inside a codec; it is still the file's fault
        logger.warning("could not decode %r: %r", upload.filename, err)
        raise InputRejected(422, "undecodable", "the file could not be decoded as an image") from None
    width, height = decoded.size
    if max(width, height) > settings.max_image_aspect_ratio * min(width, height):
        raise InputRejected(
            422,
            "bad_dimensions",
            f"a {width}x{height} image is too elongated (limit {settings.max_image_aspect_ratio:g}:1); crop it first",
        )
    return UploadedImage(
        image=_reduce(decoded.image, draft),
        filename=upload.filename,
        sha256=hashlib.sha256(upload.data).hexdigest(),
        num_bytes=len(upload.data),
        format=decoded.format,
        width=width,
        height=height,
        data=upload.data,
    )


def _decode_detail(err: ImageDecodeError) -> str:
    if err.reason in ("not_an_image", "unsupported"):
        return f"{err.message}; send a JPEG, PNG, WebP, GIF, BMP, TIFF or HEIC photo"
    if err.reason == "too_large":
        return f"the image is too large to decode: {err.message}"
    return err.message


def _reduce(image: Image.Image, short_side: int) -> Image.Image:
    """Shrink by the largest integer factor that keeps the short side >= ``short_side`` (cheap box filter)."""
    factor = min(image.size) // short_side
    return image.reduce(factor) if factor >= 2 else image
