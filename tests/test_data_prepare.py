"""verify, prepare (cache + manifest, idempotent and incremental) and stats on tiny generated datasets."""

from __future__ import annotations

import os
from pathlib import Path

import nasty_images as nasty
import pytest
from datasets import make_tiny_dataset
from PIL import Image

from pawfinder.data.prepare import (
    MANIFEST_COLUMNS,
    bad_files_path,
    load_manifest,
    manifest_hash,
    manifest_path,
    prepare,
)
from pawfinder.data.resize import resized_size
from pawfinder.data.stats import dataset_stats
from pawfinder.data.verify import verify_dataset
from pawfinder.settings import Settings

BREEDS = ("Abyssinian", "Bengal", "beagle", "pug")


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values = {"home": tmp_path / "home", "data_dir": tmp_path / "pets", "prepare_short_side": 48, "workers": 1}
    return Settings(**(values | overrides))


def _snapshot(root: Path) -> dict[str, int]:
    return {str(path): path.stat().st_mtime_ns for path in root.rglob("*") if path.is_file()}


def _nasty_dataset(root: Path) -> Path:
    """Tiny dataset where some annotated files are awkward (converted) and some are broken (skipped)."""
    make_tiny_dataset(root, breeds=BREEDS, per_breed=4, test_per_breed=2, size=(64, 40))
    images = root / "images"
    (images / "Abyssinian_1.jpg").write_bytes(nasty.png_rgba_half_transparent())  # PNG data under .jpg
    (images / "Abyssinian_2.jpg").write_bytes(nasty.jpeg_exif_rotated(80, 50))
    (images / "Bengal_1.jpg").write_bytes(nasty.jpeg_cmyk())
    (images / "beagle_1.jpg").write_bytes(nasty.truncated_jpeg())
    (images / "beagle_2.jpg").write_bytes(b"")
    (images / "pug_1.jpg").write_bytes(nasty.bomb_png(20_000, 20_000))
    (images / "pug_5.jpg").unlink()  # a test image that is annotated but missing
    (images / "notes.txt").write_text("not an image")  # an unlisted file
    return root


def test_resized_size_never_upscales() -> None:
    assert resized_size((500, 375), 256) == (341, 256)
    assert resized_size((375, 500), 256) == (256, 341)
    assert resized_size((200, 150), 256) == (200, 150)
    assert resized_size((256, 256), 256) == (256, 256)


def test_verify_reports_every_problem_without_crashing(tmp_path: Path) -> None:
    root = _nasty_dataset(tmp_path / "pets")
    report = verify_dataset(root, max_pixels=10_000_000, workers=1)
    bad = {check.image: check.reason for check in report.bad}
    assert bad == {
        "beagle_1": "truncated",
        "beagle_2": "empty",
        "pug_1": "too_large",
        "pug_5": "missing",
        "notes": "not_an_image",
    }
    assert report.annotated == 24
    assert report.checked == 24  # 23 annotated files on disk + notes.txt
    assert report.ok == 20  # 23 annotated files on disk, 3 of them broken
    assert report.unlisted == [str(root / "images" / "notes.txt")]
    assert report.note_counts == {"cmyk": 1, "exif_rotated": 1, "png_data_with_jpg_name": 1, "rgba": 1}


def test_prepare_writes_cache_and_manifest(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _nasty_dataset(settings.dataset_dir)
    report = prepare(settings)
    manifest = load_manifest(settings)

    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert report.images == len(manifest) == 20
    assert {bad["image"]: bad["reason"] for bad in report.bad_files} == {
        "beagle_1": "truncated",
        "beagle_2": "empty",
        "pug_1": "too_large",
        "pug_5": "missing",
    }
    assert bad_files_path(settings).is_file()
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert manifest["variant"].eq("original").all()
    for row in manifest.to_dict("records"):
        with Image.open(row["path"]) as cached:
            assert cached.mode == "RGB"
            assert cached.size == (row["width"], row["height"])
        assert min(row["width"], row["height"]) == min(48, row["source_width"], row["source_height"])
        assert Path(row["source"]).is_file()

    rotated = manifest.set_index("image").loc["Abyssinian_2"]
    assert (rotated["source_width"], rotated["source_height"]) == (80, 50)
    assert (rotated["width"], rotated["height"]) == (48, 77)  # upright portrait, short side 48
    flattened = manifest.set_index("image").loc["Abyssinian_1"]
    assert flattened["notes"] == "png_data_with_jpg_name,rgba"


def test_prepare_is_idempotent_and_incremental(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    make_tiny_dataset(settings.dataset_dir, breeds=BREEDS, per_breed=4, test_per_breed=1)
    first = prepare(settings)
    assert (first.processed, first.skipped, first.manifest_written) == (20, 0, True)
    digest = manifest_hash(settings)
    before = _snapshot(settings.home)

    second = prepare(settings)
    assert (second.processed, second.skipped, second.manifest_written) == (0, 20, False)
    assert _snapshot(settings.home) == before  # the second run writes nothing
    assert manifest_hash(settings) == digest

    # change one source, delete one annotated image: only those are touched
    changed = settings.dataset_dir / "images" / "pug_2.jpg"
    Image.new("RGB", (90, 70), (10, 200, 30)).save(changed)
    os.utime(changed, ns=(1, 1))
    (settings.dataset_dir / "images" / "beagle_3.jpg").unlink()
    third = prepare(settings)
    assert (third.processed, third.skipped) == (2, 18)
    assert [bad["image"] for bad in third.bad_files] == ["beagle_3"]
    assert third.removed == 1
    manifest = load_manifest(settings).set_index("image")
    assert "beagle_3" not in manifest.index
    assert (manifest.loc["pug_2", "source_width"], manifest.loc["pug_2", "source_height"]) == (90, 70)
    assert manifest_hash(settings) != digest


def test_prepare_in_parallel_matches_serial(tmp_path: Path) -> None:
    make_tiny_dataset(tmp_path / "pets", breeds=BREEDS, per_breed=8, test_per_breed=2)  # 40 images: uses the pool
    serial = _settings(tmp_path, workers=1, home=tmp_path / "serial")
    parallel = _settings(tmp_path, workers=2, home=tmp_path / "parallel")
    assert prepare(parallel).processed == 40
    prepare(serial)
    assert manifest_hash(serial) == manifest_hash(parallel)


def test_new_split_settings_reuse_the_cache(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    make_tiny_dataset(settings.dataset_dir, breeds=BREEDS, per_breed=8, test_per_breed=1)
    prepare(settings)
    report = prepare(_settings(tmp_path, seed=7, val_fraction=0.3))
    assert report.processed == 0
    assert report.manifest_written
    assert manifest_path(settings).is_file()


def test_load_manifest_explains_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pawfinder data prepare"):
        load_manifest(_settings(tmp_path))


def test_stats_has_exactly_the_documented_shape(tmp_path: Path) -> None:
    settings = _settings(tmp_path, val_fraction=0.25)
    _nasty_dataset(settings.dataset_dir)
    stats = dataset_stats(settings)
    assert list(stats) == ["classes", "images", "splits", "per_breed", "bad_files"]
    assert stats["classes"] == 4
    assert stats["images"] == 24
    assert stats["splits"] == {"trainval": 16, "val": 4, "test": 8}
    assert stats["per_breed"]["pug"] == {"trainval": 4, "val": 1, "test": 2}
    assert [(bad["image"], bad["reason"]) for bad in stats["bad_files"]] == [
        ("beagle_1", "truncated"),
        ("beagle_2", "empty"),
        ("pug_1", "too_large"),
        ("pug_5", "missing"),
    ]
