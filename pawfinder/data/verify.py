"""`data verify`: decode every image of a dataset and report every problem, without stopping at the first.

Checked: every image named in ``trainval.txt``/``test.txt`` (a missing file is a problem) and every file under
``images/`` (files no annotation names are reported as ``unlisted``). Images named only in ``list.txt`` without a
file are counted, not flagged: a local copy may hold part of the official test split back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pawfinder.data.annotations import read_annotations
from pawfinder.data.images import ImageDecodeError, decode_image
from pawfinder.data.layout import DatasetLayout
from pawfinder.data.parallel import parallel_map


@dataclass(frozen=True)
class CheckTask:
    """One file to decode (picklable for worker processes)."""

    image: str
    path: Path
    max_pixels: int


@dataclass
class ImageCheck:
    """Outcome for one file: ``reason`` is a decode failure reason or ``missing`` when ``ok`` is false."""

    image: str
    path: str
    ok: bool
    reason: str | None = None
    message: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    notes: list[str] = field(default_factory=list)
    listed: bool = True


@dataclass
class VerifyReport:
    """Everything `data verify` found. ``bad`` files are skipped by `prepare`; ``noted`` ones are converted."""

    dataset_dir: str
    checked: int
    ok: int
    annotated: int
    bad: list[ImageCheck]
    noted: list[ImageCheck]
    note_counts: dict[str, int]
    unlisted: list[str]  # paths of files under images/ that no annotation names
    list_only_without_file: int

    def to_dict(self) -> dict:
        return asdict(self)


def check_image(task: CheckTask) -> ImageCheck:
    """Fully decode one file and describe it; never raises for bad image data."""
    try:
        decoded = decode_image(task.path, max_pixels=task.max_pixels)
    except FileNotFoundError:
        return ImageCheck(task.image, str(task.path), ok=False, reason="missing", message="the file does not exist")
    except ImageDecodeError as err:
        return ImageCheck(task.image, str(task.path), ok=False, reason=err.reason, message=err.message)
    width, height = decoded.size
    return ImageCheck(
        task.image, str(task.path), True, None, None, decoded.format, decoded.mode, width, height, decoded.notes
    )


def check_images(
    tasks: list[CheckTask], *, workers: int, show_progress: bool = False, description: str = "verify"
) -> list[ImageCheck]:
    """Decode ``tasks`` in parallel; results in the same order."""
    return list(parallel_map(check_image, tasks, workers=workers, description=description, show_progress=show_progress))


def verify_dataset(dataset_dir: Path, *, max_pixels: int, workers: int, show_progress: bool = False) -> VerifyReport:
    """Decode every annotated image and every file under ``images/``; collect problems and conversion notes."""
    layout = DatasetLayout(dataset_dir)
    if not layout.images_dir.is_dir():
        raise FileNotFoundError(
            f"{layout.images_dir} not found: run `pawfinder data download` or set PAWFINDER_DATA_DIR to a local copy"
        )
    annotated = sorted(
        {a.image for path in (layout.trainval_file, layout.test_file) if path.is_file() for a in read_annotations(path)}
    )
    listed_any = set(annotated) | (
        {a.image for a in read_annotations(layout.list_file)} if layout.list_file.is_file() else set()
    )
    expected = {layout.image_path(stem) for stem in annotated}
    others = sorted(path for path in layout.images_dir.iterdir() if path.is_file() and path not in expected)
    tasks = [CheckTask(stem, layout.image_path(stem), max_pixels) for stem in annotated]
    tasks += [CheckTask(path.stem, path, max_pixels) for path in others]
    checks = check_images(tasks, workers=workers, show_progress=show_progress)
    for check in checks:
        check.listed = check.image in listed_any and Path(check.path) == layout.image_path(check.image)
    present = {path.stem for path in others if path == layout.image_path(path.stem)}
    return VerifyReport(
        dataset_dir=str(dataset_dir),
        checked=sum(1 for check in checks if check.reason != "missing"),
        ok=sum(1 for check in checks if check.ok),
        annotated=len(annotated),
        bad=[check for check in checks if not check.ok],
        noted=[check for check in checks if check.ok and check.notes],
        note_counts=dict(sorted(Counter(note for check in checks for note in check.notes).items())),
        unlisted=[check.path for check in checks if not check.listed],
        list_only_without_file=len(listed_any - set(annotated) - present),
    )
