"""`data download` against a real HTTP server on 127.0.0.1 serving tiny archives (Range requests supported)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from datasets import make_tiny_dataset

from pawfinder.data.download import (
    OFFLINE_MESSAGE,
    Archive,
    ChecksumError,
    OfflineError,
    UnsafeArchiveError,
    dataset_present,
    download,
    fetch_archive,
    safe_extract,
)
from pawfinder.data.layout import DatasetLayout
from pawfinder.settings import Settings


@dataclass
class ArchiveServer:
    """What the server serves (path -> bytes) and the Range headers it received."""

    files: dict[str, bytes]
    url: str = ""
    ranges: list[str | None] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[ArchiveServer]:
    state = ArchiveServer(files={})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = state.files.get(self.path)
            header = self.headers.get("Range")
            state.ranges.append(header)
            if data is None:
                self.send_error(404)
                return
            start = int(header.removeprefix("bytes=").split("-")[0]) if header else 0
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206 if header else 200)
            if header:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])

        def log_message(self, *args: object) -> None:
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/pets"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def _tar_gz(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _official_like_archives(tmp_path: Path) -> dict[str, bytes]:
    """images.tar.gz and annotations.tar.gz built from a tiny dataset, laid out like the official ones."""
    source = make_tiny_dataset(tmp_path / "source", breeds=("Abyssinian", "pug"), per_breed=2, test_per_breed=1)
    archives = {}
    for folder in ("images", "annotations"):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(source / folder, arcname=folder)
        archives[f"{folder}.tar.gz"] = buffer.getvalue()
    return archives


def _spec(name: str, data: bytes) -> Archive:
    return Archive(name, hashlib.md5(data).hexdigest(), len(data))


def _settings(tmp_path: Path, *urls: str) -> Settings:
    return Settings(home=tmp_path / "home", data_dir=tmp_path / "data", dataset_urls=urls)


def test_downloads_extracts_and_then_skips(tmp_path: Path, server: ArchiveServer) -> None:
    archives = _official_like_archives(tmp_path)
    server.files = {f"/pets/{name}": data for name, data in archives.items()}
    specs = tuple(_spec(name, data) for name, data in archives.items())
    settings = _settings(tmp_path, server.url)

    report = download(settings, archives=specs)
    assert not report.skipped
    assert report.extracted == ["images.tar.gz", "annotations.tar.gz"]
    assert dataset_present(DatasetLayout(settings.dataset_dir))
    assert (settings.dataset_dir / "images" / "pug_3.jpg").is_file()
    assert not list(settings.dataset_dir.glob(".extracting-*"))

    requests = len(server.ranges)
    assert download(settings, archives=specs).skipped
    assert len(server.ranges) == requests  # nothing fetched the second time


def test_falls_back_to_mirror(tmp_path: Path, server: ArchiveServer) -> None:
    data = b"annotation archive bytes" * 100
    server.files = {"/pets/mirror/a.tar.gz": data}
    with httpx.Client() as client:
        path = fetch_archive(
            _spec("a.tar.gz", data), (server.url, f"{server.url}/mirror"), tmp_path / "dl", client=client
        )
    assert path.read_bytes() == data


def test_resumes_partial_file_with_range_request(tmp_path: Path, server: ArchiveServer) -> None:
    data = bytes(range(256)) * 400
    server.files = {"/pets/images.tar.gz": data}
    downloads = tmp_path / "dl"
    downloads.mkdir()
    (downloads / "images.tar.gz.part").write_bytes(data[:40_000])
    with httpx.Client() as client:
        path = fetch_archive(_spec("images.tar.gz", data), (server.url,), downloads, client=client)
    assert server.ranges == ["bytes=40000-"]
    assert path.read_bytes() == data
    assert not (downloads / "images.tar.gz.part").exists()


def test_checksum_failure_keeps_nothing(tmp_path: Path, server: ArchiveServer) -> None:
    data = b"x" * 5_000
    server.files = {"/pets/images.tar.gz": data}
    wrong = Archive("images.tar.gz", hashlib.md5(b"something else").hexdigest(), len(data))
    with httpx.Client() as client, pytest.raises(ChecksumError, match="MD5"):
        fetch_archive(wrong, (server.url,), tmp_path / "dl", client=client)
    assert list((tmp_path / "dl").iterdir()) == []

    wrong_size = Archive("images.tar.gz", hashlib.md5(data).hexdigest(), len(data) + 1)
    with httpx.Client() as client, pytest.raises(ChecksumError, match="size"):
        fetch_archive(wrong_size, (server.url,), tmp_path / "dl", client=client)


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", data: bytes = b"evil") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        (_member("../escaped.txt"), "traversal"),
        (_member("images/../../escaped.txt"), "traversal"),
        (_member("/tmp/escaped.txt"), "absolute"),
        (_member("images/link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (_member("images/hard", tarfile.LNKTYPE, "images/ok.jpg"), "link"),
        (_member("images/dev", tarfile.CHRTYPE), "device"),
        (_member("images/fifo", tarfile.FIFOTYPE), "device"),
    ],
)
def test_unsafe_archive_is_refused_whole(tmp_path: Path, member: tuple, problem: str) -> None:
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(_tar_gz([_member("images/ok.jpg", data=b"fine"), member]))
    dest = tmp_path / "data"
    with pytest.raises(UnsafeArchiveError, match=problem):
        safe_extract(archive, dest)
    assert not (dest / "images" / "ok.jpg").exists()  # refused before anything was written
    assert not (tmp_path / "escaped.txt").exists()


def test_download_rejects_traversal_archive_from_server(tmp_path: Path, server: ArchiveServer) -> None:
    data = _tar_gz([_member("../../escaped.txt")])
    server.files = {"/pets/annotations.tar.gz": data}
    settings = _settings(tmp_path, server.url)
    with pytest.raises(UnsafeArchiveError):
        download(settings, archives=(_spec("annotations.tar.gz", data),))
    assert not list(tmp_path.rglob("escaped.txt"))


def test_offline_gives_the_clear_message(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/pets"
    settings = _settings(tmp_path, closed, closed + "/mirror")
    with pytest.raises(OfflineError, match=OFFLINE_MESSAGE):
        download(settings, archives=(Archive("images.tar.gz", "0" * 32),))
