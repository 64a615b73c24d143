"""Eval preprocessing with Pillow and numpy only (serving must not import torch).

The geometric step (:func:`resize_and_crop`) is THE eval resize-and-crop: the torch eval transform calls it too.
It is torchvision's ``Resize(resize_size)`` + ``CenterCrop(crop_size)``; when shrinking, computed in one Pillow
resample of just the cropped region (same kernel and anchor; a few pixels one or two grey levels apart from
Pillow's intermediate rounding; half the CPU).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pawfinder.data.images import decode_image
from pawfinder.preprocessing.spec import Interpolation, PreprocessSpec

#: Names the implementation of :func:`resize_and_crop`; change it when its output changes (it keys feature caches).
GEOMETRY_VERSION = "one-resample-crop-1"

PIL_RESAMPLE: dict[Interpolation, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) after scaling the short side to ``short_side``, rounding the long side down like torchvision."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def center_crop_box(width: int, height: int, crop_size: int) -> tuple[int, int, int, int]:
    """Pillow crop box (left, top, right, bottom) of a centered square, with torchvision's anchor rounding."""
    top = round((height - crop_size) / 2.0)
    left = round((width - crop_size) / 2.0)
    return left, top, left + crop_size, top + crop_size


def resize_and_crop(image: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """The geometric part of the eval transform: an RGB ``crop_size`` square Pillow image.

    Shrinking resamples only the cropped region, in one go; enlarging (a short side below ``resize_size``) and
    unchanged sizes resize the whole image and then crop, exactly as torchvision does.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = resized_size(image.width, image.height, spec.resize_size)
    left, top, right, bottom = center_crop_box(width, height, spec.crop_size)
    resample = PIL_RESAMPLE[spec.interpolation]
    if width < image.width:
        scale_x, scale_y = image.width / width, image.height / height
        box = (left * scale_x, top * scale_y, right * scale_x, bottom * scale_y)  # the crop, in source pixels
        return image.resize((spec.crop_size, spec.crop_size), resample=resample, box=box)
    if width != image.width:
        image = image.resize((width, height), resample=resample)
    return image.crop((left, top, right, bottom))


def preprocess(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """One image as a normalised float32 array of shape (3, crop_size, crop_size): ``(pixel / 255 - mean) / std``."""
    std = np.asarray(spec.std, dtype=np.float32)
    scale = np.float32(1.0) / (np.float32(255.0) * std)
    offset = -np.asarray(spec.mean, dtype=np.float32) / std
    pixels = np.asarray(resize_and_crop(image, spec), dtype=np.uint8)
    return np.ascontiguousarray((pixels * scale + offset).transpose(2, 0, 1), dtype=np.float32)


def preprocess_batch(images: Sequence[Image.Image], spec: PreprocessSpec) -> np.ndarray:
    """A batch of images as a float32 array of shape (N, 3, crop_size, crop_size)."""
    if not images:
        return np.empty((0, 3, spec.crop_size, spec.crop_size), dtype=np.float32)
    return np.stack([preprocess(image, spec) for image in images])


def preprocessed_batches(
    paths: Sequence[str | Path], spec: PreprocessSpec, *, max_pixels: int, batch_size: int = 32
) -> Iterator[np.ndarray]:
    """The image files at ``paths`` decoded and preprocessed as serving does, ``batch_size`` at a time."""
    for start in range(0, len(paths), batch_size):
        images = [decode_image(Path(p), max_pixels=max_pixels).image for p in paths[start : start + batch_size]]
        yield preprocess_batch(images, spec)
