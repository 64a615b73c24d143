"""Eval preprocessing with Pillow and numpy only (serving must not import torch).

Mirrors :func:`pawfinder.preprocessing.torch_ops.eval_transform` step by step: the same Pillow resize (the
torchvision v2 kernel for PIL images), the same crop anchor, the same scaling and normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from pawfinder.preprocessing.spec import Interpolation, PreprocessSpec

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
    """The geometric part of the eval transform, on an RGB Pillow image."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    size = resized_size(image.width, image.height, spec.resize_size)
    if size != image.size:
        image = image.resize(size, resample=PIL_RESAMPLE[spec.interpolation])
    return image.crop(center_crop_box(image.width, image.height, spec.crop_size))


def preprocess(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """One image as a normalised float32 array of shape (3, crop_size, crop_size)."""
    pixels = np.asarray(resize_and_crop(image, spec), dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def preprocess_batch(images: Sequence[Image.Image], spec: PreprocessSpec) -> np.ndarray:
    """A batch of images as a float32 array of shape (N, 3, crop_size, crop_size)."""
    if not images:
        return np.empty((0, 3, spec.crop_size, spec.crop_size), dtype=np.float32)
    return np.stack([preprocess(image, spec) for image in images])
