"""`data prepare`, the pipeline's "preprocess" stage: a cache of upright RGB JPEGs (short side
``settings.prepare_short_side``, never upscaled) plus ``manifest.parquet``, which training and evaluation read.

Incremental and idempotent: an image whose source path, size and mtime are unchanged (and whose cached file exists)
is not touched; the manifest and ``bad_files.json`` are rewritten only when their content changes, so a second run
writes nothing. Bad images are listed in the report and in ``bad_files.json``, never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from pawfinder.data.annotations import SPLITS, Annotation, load_splits
from pawfinder.data.layout import DatasetLayout, read_variants
from pawfinder.data.parallel import parallel_map
from pawfinder.data.resize import CacheResult, CacheTask, cache_image
from pawfinder.settings import Settings

MANIFEST_COLUMNS = (
    "image", "path", "label", "class_id", "species", "split", "sha256", "width", "height",
    "source", "source_width", "source_height", "variant", "source_size", "source_mtime_ns", "notes",
)  # fmt: skip
#: Manifest columns that identify the prepared data independently of where it lives (see ``manifest_hash``).
_HASHED_COLUMNS = ("image", "label", "class_id", "split", "sha256", "width", "height")


@dataclass
class PrepareReport:
    """Outcome of one `prepare` run."""

    manifest: str
    images: int
    processed: int
    skipped: int
    removed: int
    bad_files: list[dict]
    manifest_written: bool
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def cache_root(settings: Settings) -> Path:
    """The cache for the configured short side: ``<prepared_dir>/s<short side>``."""
    return settings.prepared_dir / f"s{settings.prepare_short_side}"


def manifest_path(settings: Settings) -> Path:
    return cache_root(settings) / "manifest.parquet"


def bad_files_path(settings: Settings) -> Path:
    return cache_root(settings) / "bad_files.json"


def load_manifest(settings: Settings) -> pd.DataFrame:
    """The manifest written by `prepare` (one row per usable image; ``path`` is the cached file)."""
    path = manifest_path(settings)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `pawfinder data prepare` first")
    return pd.read_parquet(path)


def manifest_hash(settings: Settings) -> str:
    """SHA-256 over the manifest's location-independent columns: the identity of the prepared data version."""
    frame = load_manifest(settings).loc[:, list(_HASHED_COLUMNS)].sort_values("image")
    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()


def prepare(settings: Settings, *, show_progress: bool = False) -> PrepareReport:
    """Bring the cache and manifest up to date with the dataset under ``settings.dataset_dir``."""
    started = time.perf_counter()
    layout = DatasetLayout(settings.dataset_dir)
    splits = load_splits(settings.dataset_dir, settings.val_fraction, settings.seed)
    images_dir = cache_root(settings) / "images"
    previous = _previous_results(settings)
    rows: list[tuple[Annotation, str, CacheResult]] = []
    todo: list[tuple[Annotation, str, CacheTask]] = []
    for split in SPLITS:
        for annotation in splits[split]:
            source = layout.image_path(annotation.image)
            target = images_dir / f"{annotation.image}.jpg"
            cached = previous.get(annotation.image)
            if _unchanged(cached, source, target):
                rows.append((annotation, split, cached[1]))
            else:
                task = CacheTask(
                    annotation.image, source, target, settings.prepare_short_side, settings.max_image_pixels
                )
                todo.append((annotation, split, task))
    results = parallel_map(
        cache_image,
        [task for _, _, task in todo],
        workers=settings.workers,
        description="prepare",
        show_progress=show_progress,
    )
    rows += [(annotation, split, result) for (annotation, split, _), result in zip(todo, results, strict=True)]
    manifest = _manifest_frame(rows, layout, images_dir)
    bad_files = [
        {"image": a.image, "split": split, "reason": r.reason, "message": r.message}
        for a, split, r in sorted(rows, key=lambda row: row[0].image)
        if not r.ok
    ]
    removed = _remove_orphans(images_dir, set(manifest["image"]))
    written = _write_if_changed(manifest, bad_files, settings)
    return PrepareReport(
        manifest=str(manifest_path(settings)),
        images=len(manifest),
        processed=len(todo),
        skipped=len(rows) - len(todo),
        removed=removed,
        bad_files=bad_files,
        manifest_written=written,
        seconds=round(time.perf_counter() - started, 3),
    )


def _previous_results(settings: Settings) -> dict[str, tuple[str, CacheResult]]:
    """Image -> (source path, cache result) recorded by the last run; empty without a readable manifest."""
    try:
        frame = load_manifest(settings)
    except (FileNotFoundError, OSError, ValueError):
        return {}
    fields = ("sha256", "width", "height", "source_width", "source_height", "source_size", "source_mtime_ns")
    return {
        row["image"]: (
            row["source"],
            CacheResult(
                image=row["image"],
                ok=True,
                notes=[note for note in row["notes"].split(",") if note],
                **{name: row[name] for name in fields},
            ),
        )
        for row in frame.to_dict("records")
    }


def _unchanged(previous: tuple[str, CacheResult] | None, source: Path, target: Path) -> bool:
    """True when the source file is the same file, same size and mtime as last time and its cached copy exists."""
    if previous is None or previous[0] != str(source.resolve()):
        return False
    try:
        stat = source.stat()
    except FileNotFoundError:
        return False
    cached = previous[1]
    return stat.st_size == cached.source_size and stat.st_mtime_ns == cached.source_mtime_ns and target.is_file()


def _manifest_frame(
    rows: list[tuple[Annotation, str, CacheResult]], layout: DatasetLayout, images_dir: Path
) -> pd.DataFrame:
    variants = read_variants(layout)
    records = [
        {
            "image": a.image,
            "path": str((images_dir / f"{a.image}.jpg").resolve()),
            "label": a.label,
            "class_id": a.class_id,
            "species": a.species,
            "split": split,
            "sha256": r.sha256,
            "width": r.width,
            "height": r.height,
            "source": str(layout.image_path(a.image).resolve()),
            "source_width": r.source_width,
            "source_height": r.source_height,
            "variant": variants.get(a.image, "unknown"),
            "source_size": r.source_size,
            "source_mtime_ns": r.source_mtime_ns,
            "notes": ",".join(r.notes),
        }
        for a, split, r in rows
        if r.ok
    ]
    frame = pd.DataFrame.from_records(records, columns=list(MANIFEST_COLUMNS))
    order = {split: index for index, split in enumerate(SPLITS)}
    frame = frame.sort_values(["split", "image"], key=lambda col: col.map(order) if col.name == "split" else col)
    return frame.reset_index(drop=True).astype(
        {"class_id": "int64", "width": "int64", "height": "int64", "source_width": "int64", "source_height": "int64",
         "source_size": "int64", "source_mtime_ns": "int64"}
    )  # fmt: skip


def _remove_orphans(images_dir: Path, keep: set[str]) -> int:
    """Delete cached files of images that are no longer in the dataset (or became bad)."""
    if not images_dir.is_dir():
        return 0
    orphans = [path for path in images_dir.iterdir() if path.is_file() and path.stem not in keep]
    for path in orphans:
        path.unlink()
    return len(orphans)


def _write_if_changed(manifest: pd.DataFrame, bad_files: list[dict], settings: Settings) -> bool:
    """Write the manifest and bad-file list atomically, only when their content differs from what is on disk."""
    path = manifest_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = False
    try:
        unchanged = pd.read_parquet(path).equals(manifest)
    except (FileNotFoundError, OSError, ValueError):
        unchanged = False
    if not unchanged:
        partial = path.with_suffix(".parquet.part")
        manifest.to_parquet(partial, index=False)
        partial.replace(path)
        written = True
    bad_path = bad_files_path(settings)
    text = json.dumps(bad_files, indent=2) + "\n"
    if not bad_path.is_file() or bad_path.read_text(encoding="utf-8") != text:
        bad_path.write_text(text, encoding="utf-8")
        written = True
    return written
