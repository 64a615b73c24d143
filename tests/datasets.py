"""``make_tiny_dataset``: a small dataset in the official Oxford-IIIT Pet layout, for tests of every area.

Usage in a test (``tests/`` is on ``sys.path`` under pytest)::

    from datasets import make_tiny_dataset

    def test_something(tmp_path, monkeypatch):
        root = make_tiny_dataset(tmp_path / "pets", breeds=("Abyssinian", "beagle"), per_breed=6)
        monkeypatch.setenv("PAWFINDER_DATA_DIR", str(root))
        ...

It writes ``images/<label>_<n>.jpg``, ``annotations/list.txt`` (with the official comment header),
``annotations/trainval.txt``, ``annotations/test.txt`` and ``variants.csv``. By default the images are generated and
*learnable*: every breed has its own colour and stripe direction, plus noise, so a tiny model separates them in a few
steps. ``photos=True`` uses the real fixture photos instead (cycled, so their content does not match the label).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pawfinder.breeds import by_label

PHOTOS_DIR = Path(__file__).parent / "fixtures" / "photos"
DEFAULT_BREEDS = ("Abyssinian", "Bengal", "beagle", "pug")
LIST_HEADER = (
    "#Image CLASS-ID SPECIES BREED ID\n"
    "#ID: 1:37 Class ids\n"
    "#SPECIES: 1:Cat 2:Dog\n"
    "#BREED ID: 1-25:Cat 1:12:Dog\n"
    "#All images with 1st letter as captial are cat images\n"
    "#images with small first letter are dog images\n"
)


def synthetic_image(label: str, number: int, size: tuple[int, int] = (80, 60)) -> Image.Image:
    """A deterministic RGB image whose colour and stripes identify the breed; ``number`` varies the noise."""
    breed = by_label(label)
    width, height = size
    rng = np.random.default_rng(breed.class_id * 10_007 + number)
    base = np.array(colorsys.hsv_to_rgb(breed.index / 37, 0.8, 0.9)) * 255
    y, x = np.mgrid[0:height, 0:width]
    stripes = np.sin((x if breed.index % 2 else y) * (0.3 + 0.05 * (breed.index % 5)))[..., None] * 40
    pixels = base + stripes + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_tiny_dataset(
    root: Path,
    breeds: Sequence[str] = DEFAULT_BREEDS,
    per_breed: int = 6,
    *,
    test_per_breed: int = 2,
    photos: bool = False,
    size: tuple[int, int] = (80, 60),
) -> Path:
    """Write a dataset under ``root`` and return ``root``.

    Each breed gets ``per_breed`` trainval images and ``test_per_breed`` test images, numbered from 1; odd-numbered
    images are landscape (``size``) and even-numbered ones portrait. list.txt lists all of them.
    """
    images_dir = root / "images"
    annotations_dir = root / "annotations"
    images_dir.mkdir(parents=True, exist_ok=True)
    annotations_dir.mkdir(parents=True, exist_ok=True)
    photos_cycle = sorted(PHOTOS_DIR.glob("*.jpg")) if photos else []
    trainval: list[str] = []
    test: list[str] = []
    variants = ["filename,variant,width,height"]
    counter = 0
    for label in breeds:
        breed = by_label(label)
        for number in range(1, per_breed + test_per_breed + 1):
            stem = f"{label}_{number}"
            path = images_dir / f"{stem}.jpg"
            if photos:
                path.write_bytes(photos_cycle[counter % len(photos_cycle)].read_bytes())
                width, height = Image.open(path).size
            else:
                width, height = size if number % 2 else size[::-1]
                synthetic_image(label, number, (width, height)).save(path, "JPEG", quality=90)
            counter += 1
            row = f"{stem} {breed.class_id} {1 if breed.species == 'cat' else 2} {breed.species_breed_id}"
            (trainval if number <= per_breed else test).append(row)
            variants.append(f"{stem}.jpg,original,{width},{height}")
    (annotations_dir / "list.txt").write_text(LIST_HEADER + "\n".join(trainval + test) + "\n", encoding="utf-8")
    (annotations_dir / "trainval.txt").write_text("\n".join(trainval) + "\n", encoding="utf-8")
    (annotations_dir / "test.txt").write_text("\n".join(test) + "\n", encoding="utf-8")
    (root / "variants.csv").write_text("\n".join(variants) + "\n", encoding="utf-8")
    return root
