"""Where things live in a dataset root laid out like the official Oxford-IIIT Pet archives."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

#: Names of the dataset-copy variants recorded in ``variants.csv`` (``unknown`` when the file or the row is absent).
VARIANTS = ("original", "original_reencoded", "squashed_square", "unknown")


@dataclass(frozen=True)
class DatasetLayout:
    """Paths of one dataset root: ``images/<stem>.jpg`` and ``annotations/{list,trainval,test}.txt``."""

    root: Path

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def annotations_dir(self) -> Path:
        return self.root / "annotations"

    @property
    def list_file(self) -> Path:
        return self.annotations_dir / "list.txt"

    @property
    def trainval_file(self) -> Path:
        return self.annotations_dir / "trainval.txt"

    @property
    def test_file(self) -> Path:
        return self.annotations_dir / "test.txt"

    @property
    def variants_file(self) -> Path:
        """Optional ``variants.csv`` (filename, variant, width, height) of the local development copy."""
        return self.root / "variants.csv"

    def image_path(self, stem: str) -> Path:
        return self.images_dir / f"{stem}.jpg"

    def has_annotations(self) -> bool:
        return all(path.is_file() for path in (self.list_file, self.trainval_file, self.test_file))


def read_variants(layout: DatasetLayout) -> dict[str, str]:
    """Image stem -> variant from ``variants.csv``; empty when the file is absent. Unknown variant names are kept."""
    if not layout.variants_file.is_file():
        return {}
    with layout.variants_file.open(newline="", encoding="utf-8") as handle:
        return {Path(row["filename"]).stem: row["variant"] for row in csv.DictReader(handle) if row.get("filename")}
