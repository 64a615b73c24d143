"""A torch ``Dataset`` over one split of the prepared manifest (``pawfinder.data.prepare.load_manifest``).

Images are the cached RGB files, decoded by the one decoder (:func:`pawfinder.data.images.decode_image`); targets
are zero-based model output indices (``Breed.index``), the order of :data:`pawfinder.breeds.LABELS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from pawfinder.data.images import decode_image

Transform = Callable[[Image.Image], torch.Tensor]


def split_frame(manifest: pd.DataFrame, split: str, *, limit_per_class: int | None = None) -> pd.DataFrame:
    """Rows of ``split`` in manifest order; at most ``limit_per_class`` per breed (the first ones) when given."""
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise ValueError(f"the manifest has no {split!r} images; run `pawfinder data prepare` on a complete dataset")
    if limit_per_class is not None:
        rows = rows.groupby("class_id", sort=False).head(limit_per_class)
    return rows.reset_index(drop=True)


class ManifestDataset(Dataset[tuple[torch.Tensor, int]]):
    """``(transform(image), class index)`` for each row of a manifest split."""

    def __init__(self, paths: Sequence[str | Path], targets: Sequence[int], transform: Transform, *, max_pixels: int):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths = [Path(p) for p in paths]
        self.targets = [int(t) for t in targets]
        self.transform = transform
        self.max_pixels = max_pixels

    @classmethod
    def from_frame(cls, rows: pd.DataFrame, transform: Transform, *, max_pixels: int) -> ManifestDataset:
        """From manifest rows (columns ``path`` and ``class_id``)."""
        return cls(list(rows["path"]), [int(c) - 1 for c in rows["class_id"]], transform, max_pixels=max_pixels)

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, index: int) -> Image.Image:
        """The upright RGB image of row ``index``."""
        return decode_image(self.paths[index], max_pixels=self.max_pixels).image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.load_image(index)), self.targets[index]
