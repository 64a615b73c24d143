"""The out-of-distribution ("not a pet") threshold on :func:`pawfinder.inference.ood_score`.

Method: the score is the calibrated max-softmax probability. Two samples are scored by the exported model: the
validation images (in distribution) and a fixed set of generated non-pet images (uniform noise, flat colours,
linear gradients, geometric shapes on a plain background, checkerboards; deterministic in code). Among thresholds
``t`` at the validation scores, the one maximising the balanced accuracy ``(accepted pets + rejected non-pets) / 2``
is chosen, subject to accepting at least ``min_accept`` of the validation images (default 95 %; ties go to the
lower, more permissive ``t``). An image is a pet when ``score >= t``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

DEFAULT_MIN_ACCEPT = 0.95


def synthetic_non_pets(per_kind: int = 8, size: tuple[int, int] = (320, 256), seed: int = 0) -> list[Image.Image]:
    """``5 * per_kind`` RGB images that are certainly not pets, the same for the same arguments."""
    rng = np.random.default_rng(seed)
    width, height = size
    images: list[Image.Image] = []
    for _ in range(per_kind):
        images.append(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))
        images.append(Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3))))
        start, end = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        ramp = np.linspace(0, 1, width)[None, :, None]
        gradient = np.broadcast_to(start + (end - start) * ramp, (height, width, 3))
        images.append(Image.fromarray(gradient.astype(np.uint8)))
        shapes = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(shapes)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
            box = (x0, y0, x0 + int(rng.integers(20, width // 2)), y0 + int(rng.integers(20, height // 2)))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        images.append(shapes)
        cell = int(rng.integers(8, 48))
        y, x = np.mgrid[0:height, 0:width]
        board = (((x // cell) + (y // cell)) % 2).astype(np.uint8)[..., None] * rng.integers(0, 256, 3)
        images.append(Image.fromarray(board.astype(np.uint8)))
    return images


@dataclass(frozen=True)
class OodThreshold:
    """The chosen threshold and how it splits the two samples."""

    threshold: float
    pet_accept_rate: float
    non_pet_reject_rate: float
    min_accept: float

    def metrics(self) -> dict[str, float]:
        return {f"ood_{key}": float(value) for key, value in asdict(self).items()}


def fit_ood_threshold(
    pet_scores: np.ndarray, non_pet_scores: np.ndarray, *, min_accept: float = DEFAULT_MIN_ACCEPT
) -> OodThreshold:
    """The threshold described in the module docstring."""
    pets = np.asarray(pet_scores, dtype=np.float64)
    others = np.asarray(non_pet_scores, dtype=np.float64)
    if pets.size == 0 or others.size == 0:
        raise ValueError("both score samples must be non-empty")
    best: tuple[float, float, float, float] | None = None  # (balanced, -t, accept, reject)
    for t in np.unique(pets):
        accept = float((pets >= t).mean())
        if accept < min_accept:
            break
        reject = float((others < t).mean())
        candidate = ((accept + reject) / 2, -float(t), accept, reject)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    assert best is not None  # the lowest pet score accepts every pet
    return OodThreshold(threshold=-best[1], pet_accept_rate=best[2], non_pet_reject_rate=best[3], min_accept=min_accept)
