"""``pawfinder data download|verify|prepare|stats``: the dataset, from archives to the prepared image cache."""

from __future__ import annotations

import json
from typing import NoReturn

import typer

from pawfinder.cli import app
from pawfinder.data import download as data_download
from pawfinder.data.annotations import AnnotationError
from pawfinder.data.stats import dataset_stats
from pawfinder.data.verify import verify_dataset
from pawfinder.settings import Settings

data_app = typer.Typer(
    help="The Oxford-IIIT Pet dataset (PAWFINDER_DATA_DIR): download, verify, prepare the image cache, stats.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document on stdout.")
PROGRESS_OPTION = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr.")


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@data_app.command()
def download(
    force: bool = typer.Option(False, "--force", help="Download and extract even if the dataset is complete."),
    progress: bool = PROGRESS_OPTION,
) -> None:
    """Download the official archives into PAWFINDER_DATA_DIR (nothing to do when the dataset is complete).

    images.tar.gz and annotations.tar.gz are fetched from PAWFINDER_DATASET_URLS in order (primary, then mirror),
    partial files are resumed, size and MD5 are verified, and extraction refuses absolute paths, '..' and links.
    Without network it exits with status 2: set PAWFINDER_DATA_DIR to a local copy instead.
    """
    settings = Settings()
    try:
        report = data_download.download(settings, force=force, show_progress=progress)
    except data_download.OfflineError as err:
        _fail(str(err), code=2)
    except data_download.DownloadError as err:
        _fail(str(err))
    if report.skipped:
        typer.echo(f"dataset already complete in {report.dataset_dir}: nothing to download (--force to fetch again)")
        return
    typer.echo(f"downloaded and extracted {', '.join(report.extracted)} into {report.dataset_dir}")


@data_app.command()
def verify(
    as_json: bool = JSON_OPTION,
    strict: bool = typer.Option(False, "--strict", help="Exit with status 1 when any file is bad or missing."),
    progress: bool = PROGRESS_OPTION,
) -> None:
    """Decode every image and report every problem, without stopping at the first.

    Checks every image named in trainval.txt/test.txt and every file under images/. Bad files (empty, truncated,
    not_an_image, too_large, unsupported, missing) are listed; `prepare` skips them. Conversions that decoding
    applies are counted: PNG/GIF data under a .jpg name, palette, RGBA, greyscale, CMYK, 16-bit, EXIF rotation.
    """
    settings = Settings()
    try:
        report = verify_dataset(
            settings.dataset_dir, max_pixels=settings.max_image_pixels, workers=settings.workers, show_progress=progress
        )
    except (FileNotFoundError, AnnotationError) as err:
        _fail(str(err))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(f"{report.dataset_dir}: decoded {report.checked} files, {report.ok} ok, {len(report.bad)} bad")
        for check in report.bad:
            typer.echo(f"  BAD {check.path}: {check.reason}: {check.message}")
        for note, count in report.note_counts.items():
            typer.echo(f"  converted ({note}): {count}")
        for path in report.unlisted:
            typer.echo(f"  not in any annotation file: {path}")
        if report.list_only_without_file:
            typer.echo(f"  {report.list_only_without_file} images named only in list.txt have no file (held back)")
    if strict and report.bad:
        raise typer.Exit(1)


@data_app.command()
def prepare(as_json: bool = JSON_OPTION, progress: bool = PROGRESS_OPTION) -> None:
    """Build the prepared-image cache and manifest.parquet that training and evaluation read.

    The pipeline's "preprocess" stage: validate, apply EXIF orientation, convert to RGB and resize once (short side
    PAWFINDER_PREPARE_SHORT_SIDE, never upscaled) into PAWFINDER_CACHE_DIR, in parallel (PAWFINDER_WORKERS).
    Incremental: sources with unchanged path, size and mtime are skipped, and a second run writes nothing.
    """
    from pawfinder.data.prepare import prepare as run_prepare  # pandas: only imported when needed

    settings = Settings()
    try:
        report = run_prepare(settings, show_progress=progress)
    except (FileNotFoundError, AnnotationError) as err:
        _fail(str(err))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    typer.echo(
        f"{report.images} images in {report.manifest} ({report.processed} processed, {report.skipped} unchanged, "
        f"{report.removed} removed, {len(report.bad_files)} bad) in {report.seconds:.1f}s"
    )
    for bad in report.bad_files:
        typer.echo(f"  BAD {bad['image']} ({bad['split']}): {bad['reason']}: {bad['message']}")


@data_app.command()
def stats(as_json: bool = JSON_OPTION, progress: bool = PROGRESS_OPTION) -> None:
    """Count images per split and per breed, and list the files that cannot be decoded.

    trainval and test are the official annotation files; val is the seeded validation part carved OUT OF trainval
    (PAWFINDER_VAL_FRACTION, PAWFINDER_SEED), so val images are counted inside trainval too: images = trainval + test.
    """
    settings = Settings()
    try:
        result = dataset_stats(settings, show_progress=progress)
    except (FileNotFoundError, AnnotationError) as err:
        _fail(str(err))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    splits = result["splits"]
    typer.echo(
        f"{result['classes']} classes, {result['images']} images: trainval {splits['trainval']} "
        f"(of which val {splits['val']}), test {splits['test']}, {len(result['bad_files'])} bad files"
    )
    for label, counts in result["per_breed"].items():
        typer.echo(f"  {label:<28} trainval {counts['trainval']:>4}  val {counts['val']:>4}  test {counts['test']:>4}")
