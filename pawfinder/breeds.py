"""The 37 Oxford-IIIT Pet breeds: the single source of truth for labels in every app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Species = Literal["cat", "dog"]


@dataclass(frozen=True)
class Breed:
    """One class: dataset label (as in file names), official class id (1..37), species, human name."""

    label: str
    class_id: int
    species: Species
    species_breed_id: int

    @property
    def name(self) -> str:
        """Human-readable breed name, e.g. ``American Bulldog``."""
        return " ".join(word[:1].upper() + word[1:] for word in self.label.split("_"))

    @property
    def index(self) -> int:
        """Zero-based model output index."""
        return self.class_id - 1


# (label, class id, species id 1=cat 2=dog, breed id within species) exactly as in annotations/list.txt
_OFFICIAL: tuple[tuple[str, int, int, int], ...] = (
    ("Abyssinian", 1, 1, 1),
    ("american_bulldog", 2, 2, 1),
    ("american_pit_bull_terrier", 3, 2, 2),
    ("basset_hound", 4, 2, 3),
    ("beagle", 5, 2, 4),
    ("Bengal", 6, 1, 2),
    ("Birman", 7, 1, 3),
    ("Bombay", 8, 1, 4),
    ("boxer", 9, 2, 5),
    ("British_Shorthair", 10, 1, 5),
    ("chihuahua", 11, 2, 6),
    ("Egyptian_Mau", 12, 1, 6),
    ("english_cocker_spaniel", 13, 2, 7),
    ("english_setter", 14, 2, 8),
    ("german_shorthaired", 15, 2, 9),
    ("great_pyrenees", 16, 2, 10),
    ("havanese", 17, 2, 11),
    ("japanese_chin", 18, 2, 12),
    ("keeshond", 19, 2, 13),
    ("leonberger", 20, 2, 14),
    ("Maine_Coon", 21, 1, 7),
    ("miniature_pinscher", 22, 2, 15),
    ("newfoundland", 23, 2, 16),
    ("Persian", 24, 1, 8),
    ("pomeranian", 25, 2, 17),
    ("pug", 26, 2, 18),
    ("Ragdoll", 27, 1, 9),
    ("Russian_Blue", 28, 1, 10),
    ("saint_bernard", 29, 2, 19),
    ("samoyed", 30, 2, 20),
    ("scottish_terrier", 31, 2, 21),
    ("shiba_inu", 32, 2, 22),
    ("Siamese", 33, 1, 11),
    ("Sphynx", 34, 1, 12),
    ("staffordshire_bull_terrier", 35, 2, 23),
    ("wheaten_terrier", 36, 2, 24),
    ("yorkshire_terrier", 37, 2, 25),
)

BREEDS: tuple[Breed, ...] = tuple(
    Breed(label, class_id, "cat" if species == 1 else "dog", breed_id)
    for label, class_id, species, breed_id in _OFFICIAL
)
LABELS: tuple[str, ...] = tuple(b.label for b in BREEDS)
NUM_CLASSES = len(BREEDS)
_BY_LABEL = {b.label: b for b in BREEDS}
_BY_CLASS_ID = {b.class_id: b for b in BREEDS}


def by_label(label: str) -> Breed:
    """Look up a breed by its dataset label; raises ``KeyError`` with the valid choices."""
    try:
        return _BY_LABEL[label]
    except KeyError:
        raise KeyError(f"unknown breed label {label!r}; expected one of {', '.join(LABELS)}") from None


def by_class_id(class_id: int) -> Breed:
    """Look up a breed by its official class id (1..37)."""
    try:
        return _BY_CLASS_ID[class_id]
    except KeyError:
        raise KeyError(f"unknown class id {class_id}; expected 1..{NUM_CLASSES}") from None


def label_from_image_name(image_name: str) -> str:
    """Dataset label of an image name such as ``great_pyrenees_12`` or ``Abyssinian_1.jpg``."""
    stem = image_name.rsplit(".", 1)[0] if image_name.endswith((".jpg", ".jpeg", ".png")) else image_name
    label = stem.rsplit("_", 1)[0]
    by_label(label)
    return label
