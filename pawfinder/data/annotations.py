"""Parse the official annotation lists and carve a deterministic, stratified validation split out of trainval.

The official ``test`` split is only ever read for final evaluation: no training choice (early stopping,
hyper-parameters, calibration, OOD threshold) may look at it; those use ``val``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pawfinder.breeds import Species, by_class_id, label_from_image_name
from pawfinder.data.layout import DatasetLayout

SPLITS = ("train", "val", "test")


class AnnotationError(ValueError):
    """A malformed or inconsistent annotation file (message names the file and line)."""


@dataclass(frozen=True)
class Annotation:
    """One annotated image: ``image`` is the stem (``great_pyrenees_12``), ``class_id`` 1..37 as in list.txt."""

    image: str
    label: str
    class_id: int
    species: Species
    breed_id: int


def read_annotations(path: Path) -> list[Annotation]:
    """Read a list/trainval/test file: ``<image> <class id> <species 1|2> <breed id>`` per line, ``#`` comments.

    Every row is checked against the breed table (label from the image name, class id, species, breed id).
    """
    annotations: list[Annotation] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{path}:{number}"
        annotation = _parse_line(text, where)
        if annotation.image in seen:
            raise AnnotationError(f"{where}: image {annotation.image!r} is listed twice")
        seen.add(annotation.image)
        annotations.append(annotation)
    return annotations


def _parse_line(text: str, where: str) -> Annotation:
    fields = text.split()
    if len(fields) != 4:
        raise AnnotationError(f"{where}: expected 4 fields '<image> <class id> <species> <breed id>', got {text!r}")
    image = fields[0]
    try:
        class_id, species_id, breed_id = (int(value) for value in fields[1:])
        breed = by_class_id(class_id)
        label = label_from_image_name(image)
    except (ValueError, KeyError) as err:
        raise AnnotationError(f"{where}: {err}") from None
    species = "cat" if species_id == 1 else "dog" if species_id == 2 else None
    if label != breed.label or species != breed.species or breed_id != breed.species_breed_id:
        raise AnnotationError(
            f"{where}: {text!r} disagrees with the breed table "
            f"(class {class_id} is {breed.label}, {breed.species}, breed id {breed.species_breed_id})"
        )
    return Annotation(image=image, label=label, class_id=class_id, species=breed.species, breed_id=breed_id)


def split_trainval(
    annotations: list[Annotation], val_fraction: float, seed: int
) -> tuple[list[Annotation], list[Annotation]]:
    """Split trainval into (train, val), stratified by breed: ``round(n * val_fraction)`` images of each breed
    (at least one when the breed has two or more) go to val.

    Deterministic: depends only on the set of images, ``val_fraction`` and ``seed`` (not on input order), and each
    breed is shuffled by its own seeded generator, so adding images to one breed never moves another's.
    Both lists keep the input order.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    by_label: dict[str, list[str]] = defaultdict(list)
    for annotation in annotations:
        by_label[annotation.label].append(annotation.image)
    val_images: set[str] = set()
    for label, images in by_label.items():
        ordered = sorted(images)
        random.Random(f"{seed}/{label}").shuffle(ordered)  # noqa: S311 (a data split, not cryptography)
        count = round(len(ordered) * val_fraction)
        if len(ordered) >= 2:
            count = min(max(count, 1), len(ordered) - 1)
        val_images.update(ordered[:count])
    train = [a for a in annotations if a.image not in val_images]
    val = [a for a in annotations if a.image in val_images]
    return train, val


def load_splits(dataset_dir: Path, val_fraction: float, seed: int) -> dict[str, list[Annotation]]:
    """``{"train", "val", "test"}`` from ``annotations/trainval.txt`` (split by ``split_trainval``) and ``test.txt``."""
    layout = DatasetLayout(dataset_dir)
    for path in (layout.trainval_file, layout.test_file):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: run `pawfinder data download` or set PAWFINDER_DATA_DIR to a dataset copy"
            )
    trainval = read_annotations(layout.trainval_file)
    test = read_annotations(layout.test_file)
    overlap = {a.image for a in trainval} & {a.image for a in test}
    if overlap:
        raise AnnotationError(f"{len(overlap)} images are in both trainval and test, e.g. {sorted(overlap)[:3]}")
    train, val = split_trainval(trainval, val_fraction, seed)
    return {"train": train, "val": val, "test": test}
