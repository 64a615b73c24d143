"""Torch transforms for training and evaluation, built from a :class:`PreprocessSpec` (torchvision v2)."""

from __future__ import annotations

from functools import partial

import torch
from torchvision.transforms import InterpolationMode, v2

from pawfinder.preprocessing.numpy_ops import resize_and_crop
from pawfinder.preprocessing.spec import AUGMENTS, Augment, Interpolation, PreprocessSpec

_INTERPOLATION: dict[Interpolation, InterpolationMode] = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


def _to_normalised_tensor(spec: PreprocessSpec) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=spec.mean, std=spec.std)]


def eval_transform(spec: PreprocessSpec) -> v2.Compose:
    """PIL image -> float32 tensor (3, crop, crop): resize short side, center crop, scale, normalise.

    The resize and crop are :func:`pawfinder.preprocessing.numpy_ops.resize_and_crop`, the one serving runs.
    """
    return v2.Compose([v2.Lambda(partial(resize_and_crop, spec=spec)), *_to_normalised_tensor(spec)])


def train_transform(
    spec: PreprocessSpec,
    *,
    crop_size: int | None = None,
    augment: Augment = "trivialaugment",
    random_erasing: float = 0.0,
    crop_scale: float = 0.08,
) -> v2.Compose:
    """PIL image -> augmented float32 tensor: random resized crop, flip, TrivialAugmentWide/RandAugment, erasing.

    ``crop_size`` overrides the spec's crop (e.g. a smaller train resolution); ``random_erasing`` is its probability;
    ``crop_scale`` is the smallest share of the image's area a random crop covers.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; expected one of {', '.join(AUGMENTS)}")
    if not 0.0 <= random_erasing <= 1.0:
        raise ValueError(f"random_erasing is a probability in [0, 1], got {random_erasing}")
    if not 0.0 < crop_scale <= 1.0:
        raise ValueError(f"crop_scale is an area share in (0, 1], got {crop_scale}")
    interpolation = _INTERPOLATION[spec.interpolation]
    steps: list[v2.Transform] = [
        v2.RGB(),
        v2.RandomResizedCrop(
            crop_size or spec.crop_size, scale=(crop_scale, 1.0), interpolation=interpolation, antialias=True
        ),
        v2.RandomHorizontalFlip(),
    ]
    if augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide(interpolation=interpolation))
    elif augment == "randaugment":
        steps.append(v2.RandAugment(interpolation=interpolation))
    steps.extend(_to_normalised_tensor(spec))
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing))
    return v2.Compose(steps)
