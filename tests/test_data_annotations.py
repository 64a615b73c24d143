"""Annotation parsing and the deterministic, stratified validation split."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from datasets import make_tiny_dataset

from pawfinder.breeds import LABELS, by_label
from pawfinder.data.annotations import (
    Annotation,
    AnnotationError,
    load_splits,
    read_annotations,
    split_trainval,
)


def _annotation(label: str, number: int) -> Annotation:
    breed = by_label(label)
    return Annotation(f"{label}_{number}", label, breed.class_id, breed.species, breed.species_breed_id)


def _many(per_breed: int = 100) -> list[Annotation]:
    return [_annotation(label, n) for label in LABELS for n in range(1, per_breed + 1)]


def test_reads_official_format_with_comments(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text(
        "#Image CLASS-ID SPECIES BREED ID\n#SPECIES: 1:Cat 2:Dog\n\n"
        "Abyssinian_100 1 1 1\ngreat_pyrenees_12 16 2 10\nyorkshire_terrier_190 37 2 25\n"
    )
    rows = read_annotations(path)
    assert rows == [
        Annotation("Abyssinian_100", "Abyssinian", 1, "cat", 1),
        Annotation("great_pyrenees_12", "great_pyrenees", 16, "dog", 10),
        Annotation("yorkshire_terrier_190", "yorkshire_terrier", 37, "dog", 25),
    ]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("Abyssinian_100 1 1", "expected 4 fields"),
        ("Abyssinian_100 one 1 1", "invalid literal"),
        ("Abyssinian_100 2 1 1", "disagrees with the breed table"),  # class 2 is american_bulldog
        ("Abyssinian_100 1 2 1", "disagrees with the breed table"),  # wrong species
        ("Dragon_1 1 1 1", "unknown breed label"),
        ("Abyssinian_100 99 1 1", "unknown class id"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "trainval.txt"
    path.write_text(f"# header\nAbyssinian_1 1 1 1\n{line}\n")
    with pytest.raises(AnnotationError, match=rf"trainval.txt:3: .*{problem}"):
        read_annotations(path)


def test_duplicate_image_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "test.txt"
    path.write_text("Abyssinian_1 1 1 1\nAbyssinian_1 1 1 1\n")
    with pytest.raises(AnnotationError, match="listed twice"):
        read_annotations(path)


def test_split_is_stratified_and_disjoint() -> None:
    annotations = _many(100)
    train, val = split_trainval(annotations, 0.15, seed=42)
    assert len(train) + len(val) == len(annotations)
    assert not {a.image for a in train} & {a.image for a in val}
    assert Counter(a.label for a in val) == dict.fromkeys(LABELS, 15)


def test_split_is_deterministic_and_order_independent() -> None:
    annotations = _many(20)
    _, val = split_trainval(annotations, 0.15, seed=7)
    shuffled = annotations[:]
    random.Random(0).shuffle(shuffled)
    _, val_again = split_trainval(shuffled, 0.15, seed=7)
    assert {a.image for a in val} == {a.image for a in val_again}
    _, val_other_seed = split_trainval(annotations, 0.15, seed=8)
    assert {a.image for a in val} != {a.image for a in val_other_seed}


def test_adding_images_to_one_breed_does_not_move_another() -> None:
    annotations = _many(20)
    _, val = split_trainval(annotations, 0.15, seed=1)
    extra = [_annotation("pug", n) for n in range(21, 40)]
    _, val_more = split_trainval(annotations + extra, 0.15, seed=1)
    assert {a.image for a in val if a.label != "pug"} == {a.image for a in val_more if a.label != "pug"}


def test_small_breeds_keep_one_val_and_one_train_image() -> None:
    train, val = split_trainval([_annotation("pug", 1), _annotation("pug", 2)], 0.15, seed=0)
    assert len(train) == 1
    assert len(val) == 1


def test_load_splits_on_tiny_dataset(tmp_path: Path) -> None:
    root = make_tiny_dataset(tmp_path / "pets", breeds=("Abyssinian", "beagle"), per_breed=8, test_per_breed=3)
    splits = load_splits(root, val_fraction=0.25, seed=42)
    assert {name: len(rows) for name, rows in splits.items()} == {"train": 12, "val": 4, "test": 6}
    assert Counter(a.label for a in splits["val"]) == {"Abyssinian": 2, "beagle": 2}
    all_images = [a.image for rows in splits.values() for a in rows]
    assert len(all_images) == len(set(all_images))


def test_load_splits_rejects_test_images_in_trainval(tmp_path: Path) -> None:
    root = make_tiny_dataset(tmp_path / "pets", breeds=("pug",), per_breed=3, test_per_breed=1)
    test_file = root / "annotations" / "test.txt"
    test_file.write_text(test_file.read_text() + "pug_1 26 2 18\n")
    with pytest.raises(AnnotationError, match="both trainval and test"):
        load_splits(root, val_fraction=0.15, seed=0)


def test_load_splits_explains_missing_dataset(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="PAWFINDER_DATA_DIR"):
        load_splits(tmp_path, val_fraction=0.15, seed=0)
