"""`data download`: fetch the official Oxford-IIIT Pet archives, verify them and extract them safely.

Each archive is tried from every base URL in ``settings.dataset_urls`` in turn (primary, then mirror). A partial
download (``<name>.part`` under ``<home>/downloads``) is resumed with an HTTP Range request; the finished file must
match the known size and MD5 before it is renamed and extracted. Extraction refuses absolute paths, ``..``, links and
device files. Nothing is downloaded when the dataset is already complete.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import httpx
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from pawfinder.data.annotations import read_annotations
from pawfinder.data.layout import DatasetLayout
from pawfinder.settings import Settings

OFFLINE_MESSAGE = "no network: set PAWFINDER_DATA_DIR to a local copy"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """One archive to fetch: file name under each base URL, MD5 and (when known) size in bytes."""

    name: str
    md5: str
    size: int | None = None


#: The official archives (MD5s as published with torchvision's OxfordIIITPet; sizes as served by robots.ox.ac.uk).
OFFICIAL_ARCHIVES: tuple[Archive, ...] = (
    Archive("images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c", 791_918_971),
    Archive("annotations.tar.gz", "95a8c909bbe2e81eed6a22bccdf3f68f", 19_173_078),
)


class DownloadError(RuntimeError):
    """The dataset could not be downloaded; the message lists what was tried."""


class OfflineError(DownloadError):
    """No base URL could be reached at all."""


class ChecksumError(DownloadError):
    """A downloaded file does not have the expected size or MD5."""


class UnsafeArchiveError(DownloadError):
    """An archive member would escape the destination or is not a plain file or directory."""


@dataclass
class DownloadReport:
    dataset_dir: str
    skipped: bool
    downloaded: list[str] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)


def dataset_present(layout: DatasetLayout) -> bool:
    """True when the annotation files exist and every image they name for trainval/test is on disk."""
    if not layout.has_annotations():
        return False
    annotated = read_annotations(layout.trainval_file) + read_annotations(layout.test_file)
    return all(layout.image_path(a.image).is_file() for a in annotated)


def download(
    settings: Settings,
    *,
    archives: tuple[Archive, ...] = OFFICIAL_ARCHIVES,
    force: bool = False,
    show_progress: bool = False,
) -> DownloadReport:
    """Make ``settings.dataset_dir`` hold the dataset; a no-op when it is already complete (unless ``force``)."""
    layout = DatasetLayout(settings.dataset_dir)
    if not force and dataset_present(layout):
        return DownloadReport(str(layout.root), skipped=True)
    report = DownloadReport(str(layout.root), skipped=False)
    downloads = settings.home / "downloads"
    with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60.0, connect=10.0)) as client:
        for archive in archives:
            path = fetch_archive(archive, settings.dataset_urls, downloads, client=client, show_progress=show_progress)
            report.downloaded.append(str(path))
            safe_extract(path, layout.root)
            report.extracted.append(archive.name)
    return report


def fetch_archive(
    archive: Archive, base_urls: tuple[str, ...], dest_dir: Path, *, client: httpx.Client, show_progress: bool = False
) -> Path:
    """Download ``archive`` into ``dest_dir`` (resuming ``<name>.part``) and verify it; returns the final path."""
    final = dest_dir / archive.name
    if final.is_file():
        try:
            verify_file(final, archive)
            return final
        except ChecksumError:
            final.unlink()
    dest_dir.mkdir(parents=True, exist_ok=True)
    partial = dest_dir / f"{archive.name}.part"
    network_errors: list[str] = []
    other_errors: list[str] = []
    checksum_errors: list[str] = []
    for base in base_urls:
        url = f"{base.rstrip('/')}/{archive.name}"
        try:
            _download(url, partial, client=client, show_progress=show_progress)
        except httpx.TransportError as err:
            network_errors.append(f"{url}: {type(err).__name__}: {err}")
            continue
        except httpx.HTTPStatusError as err:
            other_errors.append(f"{url}: HTTP {err.response.status_code}")
            continue
        try:
            verify_file(partial, archive)
        except ChecksumError as err:
            partial.unlink(missing_ok=True)
            checksum_errors.append(f"{url}: {err}")
            continue
        partial.replace(final)
        return final
    tried = "\n  ".join(network_errors + other_errors + checksum_errors)
    if checksum_errors:
        raise ChecksumError(f"{archive.name} failed verification:\n  {tried}")
    if network_errors and not other_errors:
        raise OfflineError(f"{OFFLINE_MESSAGE} (could not download {archive.name}):\n  {tried}")
    raise DownloadError(f"could not download {archive.name}:\n  {tried}")


def _download(url: str, partial: Path, *, client: httpx.Client, show_progress: bool) -> None:
    """Append the rest of ``url`` to ``partial`` (Range request when it exists), or rewrite it from the start."""
    offset = partial.stat().st_size if partial.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416:  # nothing left to fetch: the partial file is complete (verification decides)
            return
        response.raise_for_status()
        resumed = response.status_code == 206 and response.headers.get("content-range", "").startswith(
            f"bytes {offset}-"
        )
        start = offset if resumed else 0
        length = response.headers.get("content-length")
        total = start + int(length) if length is not None and length.isdigit() else None
        with _download_progress(show_progress) as progress, partial.open("ab" if resumed else "wb") as handle:
            task = progress.add_task(partial.name.removesuffix(".part"), total=total, completed=start)
            for chunk in response.iter_bytes(_CHUNK):
                handle.write(chunk)
                progress.advance(task, len(chunk))


def _download_progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def verify_file(path: Path, archive: Archive) -> None:
    """Raise ``ChecksumError`` unless ``path`` has the archive's size (when known) and MD5."""
    size = path.stat().st_size
    if archive.size is not None and size != archive.size:
        raise ChecksumError(f"{path.name}: size {size:,} bytes, expected {archive.size:,}")
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != archive.md5:
        raise ChecksumError(f"{path.name}: MD5 {digest.hexdigest()}, expected {archive.md5}")


def safe_extract(archive_path: Path, dest: Path) -> list[str]:
    """Extract a tar archive into ``dest`` after checking EVERY member; returns the member names.

    The whole archive is refused (nothing written) if any member has an absolute path or ``..``, is a symbolic or
    hard link, or is a device/FIFO. Extraction goes to a staging folder first, then is merged into ``dest``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".extracting-{archive_path.name}"
    with tarfile.open(archive_path, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member, archive_path)
        shutil.rmtree(staging, ignore_errors=True)
        tar.extractall(staging, members=members, filter="data")
    _merge_into(staging, dest)
    shutil.rmtree(staging, ignore_errors=True)
    return [member.name for member in members]


def _check_member(member: tarfile.TarInfo, archive_path: Path) -> None:
    name = member.name
    problem = None
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        problem = "absolute path"
    elif ".." in PurePosixPath(name.replace("\\", "/")).parts:
        problem = "path traversal ('..')"
    elif member.issym() or member.islnk():
        problem = f"link to {member.linkname!r}"
    elif not (member.isfile() or member.isdir()):
        problem = "device, FIFO or other special file"
    if problem:
        raise UnsafeArchiveError(f"{archive_path.name}: refusing to extract {name!r}: {problem}")


def _merge_into(source: Path, dest: Path) -> None:
    """Move every file under ``source`` to the same relative place under ``dest`` (replacing files)."""
    for path in sorted(source.rglob("*")):
        target = dest / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            path.replace(target)
