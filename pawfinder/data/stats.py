"""`data stats`: image counts per split and per breed, plus the files that cannot be decoded."""

from __future__ import annotations

from collections import Counter

from pawfinder.breeds import LABELS
from pawfinder.data.annotations import load_splits
from pawfinder.data.layout import DatasetLayout
from pawfinder.data.verify import CheckTask, check_images
from pawfinder.settings import Settings


def dataset_stats(settings: Settings, *, show_progress: bool = False) -> dict:
    """``{"classes", "images", "splits": {"trainval", "val", "test"}, "per_breed": {label: {split: n}}, "bad_files"}``.

    Counts come from the annotation files; ``val`` is the seeded validation split carved out of trainval, so it is
    counted inside ``trainval`` too (``images`` = trainval + test). ``bad_files`` comes from decoding every annotated
    image: each entry is ``{"image", "split", "reason", "message"}``, with split ``train``/``val``/``test``.
    """
    splits = load_splits(settings.dataset_dir, settings.val_fraction, settings.seed)
    layout = DatasetLayout(settings.dataset_dir)
    counts = {
        "trainval": Counter(a.label for a in splits["train"] + splits["val"]),
        "val": Counter(a.label for a in splits["val"]),
        "test": Counter(a.label for a in splits["test"]),
    }
    present = [label for label in LABELS if counts["trainval"][label] or counts["test"][label]]
    annotated = [(split, a.image) for split, rows in splits.items() for a in rows]
    tasks = [CheckTask(image, layout.image_path(image), settings.max_image_pixels) for _, image in annotated]
    checks = check_images(tasks, workers=settings.workers, show_progress=show_progress, description="stats")
    bad_files = sorted(
        (
            {"image": check.image, "split": split, "reason": check.reason, "message": check.message}
            for (split, _), check in zip(annotated, checks, strict=True)
            if not check.ok
        ),
        key=lambda entry: entry["image"],
    )
    return {
        "classes": len(present),
        "images": len(annotated),
        "splits": {name: sum(counter.values()) for name, counter in counts.items()},
        "per_breed": {label: {name: counter[label] for name, counter in counts.items()} for label in present},
        "bad_files": bad_files,
    }
