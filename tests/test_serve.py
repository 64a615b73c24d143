"""The real serving stack: Ray Serve on the session Ray instance, a model registered in a real MLflow, real HTTP.

One Serve app is shared by the module (tests run in file order: the hot swap and the MLflow outage come last).
The module runs its own short-lived MLflow server so that it can stop it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nasty_images
import numpy as np
import pytest
from conftest import FIXTURES, free_port, run_mlflow_server, wait_http
from PIL import Image

from pawfinder.breeds import LABELS, NUM_CLASSES
from pawfinder.prediction_store import EMBEDDING_DIM, open_prediction_store
from pawfinder.settings import Settings

pytestmark = pytest.mark.slow

PHOTOS = FIXTURES / "photos"
PHOTO = PHOTOS / "pug_10.jpg"
REPO = Path(__file__).parent.parent
MAX_UPLOAD = 2 * 1024 * 1024
PREDICTION_KEYS = {"label", "breed", "species", "confidence", "is_pet", "top_k", "model", "prediction_id"}


@dataclass
class Service:
    url: str
    settings: Settings
    mlflow_uri: str
    onnx_path: Path
    stop_mlflow: threading.Event


def _register_champion(mlflow_uri: str, onnx_path: Path) -> str:
    """Log the ONNX file with the training job's own ``log_model``, register it and promote it; returns the version."""
    import mlflow

    from pawfinder.inference import OnnxClassifier
    from pawfinder.registry import promote, register, registry_client
    from ray_jobs.finalize import log_model

    settings = Settings(mlflow_tracking_uri=mlflow_uri)
    client = registry_client(settings)
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    try:
        model_uri = log_model(onnx_path, OnnxClassifier.from_path(onnx_path).metadata, run.info.run_id, settings)
    finally:
        mlflow.set_tracking_uri(None)  # log_model sets it process-wide; later tests must not inherit this server
    client.set_terminated(run.info.run_id)
    version = register(model_uri, settings.model_name, client=client, alias=None).version
    promote(settings.model_name, version, client=client, force=True, reason="serve test")
    return str(version)


@pytest.fixture(scope="module")
def service(
    ray_instance: dict[str, str], tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    from ray import serve

    from serve.app import pawfinder_app, start_serve

    stop_mlflow = threading.Event()
    mlflow_ready: dict[str, str] = {}

    def run_mlflow() -> None:
        with run_mlflow_server(tmp_path_factory.mktemp("serve-mlflow")) as uri:
            mlflow_ready["uri"] = uri
            stop_mlflow.wait()

    mlflow_thread = threading.Thread(target=run_mlflow, daemon=True)
    mlflow_thread.start()
    deadline = time.monotonic() + 150
    while "uri" not in mlflow_ready:
        assert mlflow_thread.is_alive() and time.monotonic() < deadline, "MLflow server did not start"
        time.sleep(0.2)
    uri = mlflow_ready["uri"]
    assert _register_champion(uri, tiny_onnx_model) == "1"

    port = free_port()
    settings = Settings(
        home=tmp_path_factory.mktemp("serve-home"),
        mlflow_tracking_uri=uri,
        serve_port=port,
        serve_poll_interval_s=1.0,
        serve_model_cpus=0.5,
        serve_intra_op_threads=1,
        max_upload_bytes=MAX_UPLOAD,
        max_image_pixels=4_000_000,
    )
    start_serve(settings)
    serve.run(pawfinder_app(settings), name="pawfinder", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", timeout=120)
        yield Service(url, settings, uri, tiny_onnx_model, stop_mlflow)
    finally:
        serve.shutdown()
        stop_mlflow.set()
        mlflow_thread.join(timeout=60)


def _post_photo(url: str, data: bytes, name: str = "photo.jpg", **params: object) -> httpx.Response:
    return httpx.post(f"{url}/predict", files={"file": (name, data)}, params=params, timeout=30)


def _assert_prediction(body: dict, *, top_k: int = 3, version: str | None = "1") -> None:
    assert set(body) == PREDICTION_KEYS
    assert body["label"] in LABELS and body["species"] in ("cat", "dog")
    assert 0.0 < body["confidence"] <= 1.0 and isinstance(body["is_pet"], bool)
    assert len(body["top_k"]) == top_k and body["top_k"][0]["label"] == body["label"]
    confidences = [entry["confidence"] for entry in body["top_k"]]
    assert confidences == sorted(confidences, reverse=True)
    assert all(set(entry) == {"label", "breed", "species", "confidence"} for entry in body["top_k"])
    assert body["model"]["name"] == "pawfinder"
    if version is not None:
        assert body["model"]["version"] == version
    assert len(body["prediction_id"]) >= 16


def test_serving_path_never_imports_torch() -> None:
    code = (
        "import sys, serve.app, serve.api, serve.model_store, serve.runtime, pawfinder.prediction_store, "
        "mlflow.artifacts; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_curl_predict(service: Service) -> None:
    """The seed's integration test, literally."""
    done = subprocess.run(
        ["curl", "-sS", "-F", f"file=@{PHOTO.relative_to(REPO)}", f"{service.url}/predict"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=60,
    )
    _assert_prediction(json.loads(done.stdout))


def test_every_fixture_photo_and_top_k(service: Service) -> None:
    for photo in sorted(PHOTOS.glob("*.jpg")):
        response = _post_photo(service.url, photo.read_bytes(), photo.name, top_k=5)
        assert response.status_code == 200, response.text
        _assert_prediction(response.json(), top_k=5)
    everything = _post_photo(service.url, PHOTO.read_bytes(), top_k=NUM_CLASSES).json()
    assert sum(entry["confidence"] for entry in everything["top_k"]) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("png.png", nasty_images.png_rgb),
        ("palette.png", lambda: nasty_images.png_palette(transparent=True)),
        ("rgba.png", nasty_images.png_rgba_half_transparent),
        ("grey.jpg", nasty_images.jpeg_greyscale),
        ("cmyk.jpg", nasty_images.jpeg_cmyk),
        ("grey16.png", nasty_images.png_16bit_grey),
        ("rgb16.png", nasty_images.png_16bit_rgb),
        ("rotated.jpg", nasty_images.jpeg_exif_rotated),
        ("animated.gif", nasty_images.gif_animated),
        ("photo.heic", nasty_images.heif),
        ("photo.webp", lambda: _convert(PHOTO, "WEBP")),
        ("photo.bmp", lambda: _convert(PHOTO, "BMP")),
        ("photo.tiff", lambda: _convert(PHOTO, "TIFF")),
        ("big.jpg", lambda: nasty_images.jpeg_rgb(1900, 1400)),
    ],
)
def test_accepted_formats(service: Service, name: str, make) -> None:  # type: ignore[no-untyped-def]
    response = _post_photo(service.url, make(), name)
    assert response.status_code == 200, response.text
    _assert_prediction(response.json())


def _convert(path: Path, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).save(buffer, fmt)
    return buffer.getvalue()


def _hostile_requests(url: str) -> list[tuple[str, dict[str, object], set[int]]]:
    """(case, httpx.request kwargs, allowed statuses): at least 50 ways to send something wrong."""
    rng = np.random.default_rng(7)
    jpeg = PHOTO.read_bytes()
    png = nasty_images.png_rgb()
    predict = f"{url}/predict"
    cases: list[tuple[str, dict[str, object], set[int]]] = []

    def upload(case: str, data: bytes, allowed: set[int], name: str = "x.jpg", field: str = "file") -> None:
        cases.append((case, {"method": "POST", "url": predict, "files": {field: (name, data)}}, allowed))

    for size in (1, 7, 100, 1000, 50_000, 300_000):
        upload(f"random_{size}", rng.integers(0, 256, size, dtype=np.uint8).tobytes(), {415, 422})
    upload("empty", b"", {422})
    for case, data in {
        "text": b"hello, I am definitely a cat",
        "html": b"<html><body><img src=x onerror=alert(1)></body></html>",
        "json": b'{"file": "cat.jpg"}',
        "pdf": b"%PDF-1.7\n1 0 obj<<>>endobj\n%%EOF",
        "zip": b"PK\x03\x04" + bytes(100),
        "elf": b"\x7fELF" + bytes(100),
        "gzip": b"\x1f\x8b\x08" + bytes(100),
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    }.items():
        upload(case, data, {415, 422})
    upload("jpeg_header_only", jpeg[:200], {422})
    upload("jpeg_truncated", nasty_images.truncated_jpeg(), {422})
    upload("jpeg_half", jpeg[: len(jpeg) // 2], {422})
    upload("jpeg_garbled_middle", jpeg[:2000] + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), {422})
    upload("png_truncated", png[: len(png) // 2], {422})
    upload("png_bad_crc", png[:40] + b"\x00\x00\x00\x00" + png[44:], {422})
    upload("gif_header_only", b"GIF89a\x10\x00\x10\x00", {422})
    upload("bmp_header_only", _convert(PHOTO, "BMP")[:60], {422})
    upload("tiff_header_only", _convert(PHOTO, "TIFF")[:100], {422})
    upload("webp_truncated", _convert(PHOTO, "WEBP")[:100], {422})
    upload("heic_truncated", nasty_images.heif()[:100], {415, 422})
    upload("ico", nasty_images.ico(), {415})
    upload("bomb_png", nasty_images.bomb_png(), {413})
    upload("bomb_png_wide", nasty_images.bomb_png(200_000, 50), {413})
    upload("pixels_over_limit", nasty_images.jpeg_rgb(2100, 2000), {413})
    upload("extreme_aspect_ratio", nasty_images.jpeg_rgb(3000, 20), {422})
    upload("oversize_file", jpeg + bytes(MAX_UPLOAD), {413})
    for field in ("photo", "image", "files", "FILE", "file[]"):
        upload(f"field_{field}", jpeg, {422}, field=field)
    not_a_file = {"data": {"file": "cat.jpg"}, "files": {"other": ("a.jpg", jpeg)}}
    cases.append(("form_field_not_a_file", {"method": "POST", "url": predict, **not_a_file}, {422}))
    cases.append(("two_files", {"method": "POST", "url": predict, "files": [("file", ("a.jpg", jpeg))] * 2}, {422}))
    cases.append(("raw_body", {"method": "POST", "url": predict, "content": jpeg}, {415}))
    cases.append(("json_body", {"method": "POST", "url": predict, "json": {"file": "x"}}, {415}))
    cases.append(("urlencoded", {"method": "POST", "url": predict, "data": {"x": "1"}}, {415, 422}))
    multipart = {"content-type": "multipart/form-data"}
    cases.append(("no_boundary", {"method": "POST", "url": predict, "content": jpeg, "headers": multipart}, {422}))
    broken = {"content-type": "multipart/form-data; boundary=xyz"}
    cases.append(
        ("broken_multipart", {"method": "POST", "url": predict, "content": b"--xyz\r\nX", "headers": broken}, {422})
    )
    for top_k in ("0", "-1", str(NUM_CLASSES + 1), "many", "1e9"):
        cases.append(
            (f"top_k_{top_k}", {"method": "POST", "url": predict, "params": {"top_k": top_k},
                                "files": {"file": ("x.jpg", jpeg)}}, {422})
        )  # fmt: skip
    cases.append(("get_predict", {"method": "GET", "url": predict}, {405}))
    cases.append(("unknown_route", {"method": "GET", "url": f"{url}/admin"}, {404}))
    feedback = f"{url}/feedback"
    cases.append(("feedback_unknown_id", {"method": "POST", "url": feedback,
                                          "json": {"prediction_id": "nope", "label": "pug"}}, {404}))  # fmt: skip
    cases.append(("feedback_bad_label", {"method": "POST", "url": feedback,
                                         "json": {"prediction_id": "nope", "label": "unicorn"}}, {422}))  # fmt: skip
    cases.append(("feedback_missing", {"method": "POST", "url": feedback, "json": {"label": "pug"}}, {422}))
    cases.append(("feedback_not_json", {"method": "POST", "url": feedback, "content": b"pug"}, {422}))
    batch = f"{url}/predict/batch"
    too_many = [("files", (f"{i}.jpg", png)) for i in range(17)]
    cases.append(("batch_too_many_files", {"method": "POST", "url": batch, "files": too_many}, {422}))
    cases.append(("batch_wrong_field", {"method": "POST", "url": batch, "files": {"file": ("a.jpg", png)}}, {422}))
    return cases


def test_hostile_inputs_get_clear_4xx_and_service_stays_ready(service: Service) -> None:
    cases = _hostile_requests(service.url)
    assert len(cases) >= 50
    failures = []
    with httpx.Client(timeout=30) as client:
        for case, request, allowed in cases:
            response = client.request(**request)  # type: ignore[arg-type]
            body = response.json()
            if response.status_code not in allowed or not isinstance(body.get("detail"), str) or not body["detail"]:
                failures.append(f"{case}: {response.status_code} {response.text[:200]}")
        assert not failures, "\n".join(failures)
        assert client.get(f"{service.url}/readyz").status_code == 200
        assert _post_photo(service.url, PHOTO.read_bytes()).status_code == 200


def _raw_http(port: int, head: bytes, body_chunks: Iterator[bytes], *, timeout: float = 20.0) -> bytes:
    """Send ``head`` and body chunks on a raw socket until the server answers; return the status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        deadline = time.monotonic() + timeout
        received = b""
        for chunk in body_chunks:
            with contextlib.suppress(BlockingIOError):
                received += sock.recv(4096)
            if received or time.monotonic() > deadline:
                break
            try:
                sock.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        while b"\r\n" not in received:
            received += sock.recv(4096)
    return received.split(b"\r\n", 1)[0]


def test_oversize_body_refused_without_reading_it(service: Service) -> None:
    port = service.settings.serve_port
    declared = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {50 * MAX_UPLOAD}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    ).encode()
    # The client declares 100 MB but sends only 64 KB, then waits: the 413 must come anyway.
    assert b" 413 " in _raw_http(port, declared, iter([b"x" * 65536] + [b""] * 10_000))

    chunked = (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'
    chunks = [f"{len(part):x}\r\n".encode() + part + b"\r\n"]
    chunks += [b"10000\r\n" + b"y" * 0x10000 + b"\r\n"] * (3 * MAX_UPLOAD // 0x10000)
    # A valid multipart start, then a file part that never ends: the server must stop reading on its own.
    sent = iter(chunks)
    assert b" 413 " in _raw_http(port, chunked, sent)
    assert httpx.get(f"{service.url}/readyz").status_code == 200


def test_batch_gives_per_file_results(service: Service) -> None:
    files = [
        ("files", ("pug.jpg", PHOTO.read_bytes())),
        ("files", ("notes.txt", b"not a photo")),
        ("files", ("cat.png", nasty_images.png_rgb())),
    ]
    response = httpx.post(f"{service.url}/predict/batch", files=files, params={"top_k": 2}, timeout=30)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["pug.jpg", "notes.txt", "cat.png"]
    assert [r["status"] for r in results] == [200, 415, 200]
    _assert_prediction(results[0]["prediction"], top_k=2)
    assert results[1]["reason"] == "not_an_image" and results[1]["detail"]


def test_haproxy_ingress_listens_on_loopback_only(service: Service) -> None:
    """HAProxy fronts the API (default ingress) and none of its listeners, stats and metrics included, is public."""
    import psutil

    listening = [
        conn.laddr
        for proc in psutil.process_iter(["name"])
        if proc.info["name"] == "haproxy"
        for conn in proc.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    ]
    assert service.settings.serve_port in {address.port for address in listening}
    assert {address.ip for address in listening} == {"127.0.0.1"}


def test_info_endpoints(service: Service) -> None:
    with httpx.Client(base_url=service.url, timeout=10) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz").json()
        assert ready["ready"] is True and ready["model"]["version"] == "1"
        breeds = client.get("/breeds").json()
        assert [b["label"] for b in breeds] == list(LABELS)
        assert client.get("/docs").status_code == 200
        assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_prediction_log_and_feedback(service: Service) -> None:
    data = PHOTO.read_bytes()
    prediction = _post_photo(service.url, data).json()
    response = httpx.post(
        f"{service.url}/feedback", json={"prediction_id": prediction["prediction_id"], "label": "pug"}, timeout=10
    )
    assert response.status_code == 201, response.text

    store = open_prediction_store(service.settings)
    try:
        rows = store.predictions(with_embeddings=True).set_index("prediction_id")
    finally:
        store.close()
    row = rows.loc[prediction["prediction_id"]]
    assert row["feedback_label"] == "pug"
    assert row["label"] == prediction["label"] and row["model_version"] == "1"
    assert row["image_format"] == "JPEG" and row["image_bytes"] == len(data)
    assert (row["image_width"], row["image_height"]) == Image.open(PHOTO).size
    assert row["embedding"].shape == (EMBEDDING_DIM,) and row["latency_ms"] > 0
    assert row["image_path"] is None  # raw images are not kept unless configured


def test_metrics(service: Service) -> None:
    _post_photo(service.url, PHOTO.read_bytes())
    _post_photo(service.url, b"not an image")
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    assert 'pawfinder_http_requests_total{method="POST",route="/predict",status="200"}' in text
    assert 'route="/predict",status="415"' in text
    assert "pawfinder_http_request_duration_seconds_bucket" in text
    assert "pawfinder_inference_batch_size_count" in text
    assert 'pawfinder_rejected_inputs_total{reason="not_an_image"}' in text
    assert 'pawfinder_model_info{name="pawfinder",version="1"} 1.0' in text


def test_concurrent_requests_are_batched(service: Service) -> None:
    data = PHOTO.read_bytes()

    def post(_: int) -> int:
        return _post_photo(service.url, data).status_code

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(post, range(64))) == {200}
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    single = next(
        line for line in text.splitlines() if line.startswith('pawfinder_inference_batch_size_bucket{le="1.0"}')
    )
    count = next(line for line in text.splitlines() if line.startswith("pawfinder_inference_batch_size_count"))
    assert float(single.split()[-1]) < float(count.split()[-1])  # some images shared a batch


def test_hot_swap_without_failed_requests(service: Service) -> None:
    results: list[tuple[int, str]] = []
    stop = threading.Event()
    data = PHOTO.read_bytes()

    def loop() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(f"{service.url}/predict", files={"file": ("p.jpg", data)})
                version = response.json()["model"]["version"] if response.status_code == 200 else ""
                results.append((response.status_code, version))

    clients = [threading.Thread(target=loop) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        time.sleep(1.0)
        assert _register_champion(service.mlflow_uri, service.onnx_path) == "2"
        deadline = time.monotonic() + 60
        while not any(version == "2" for _, version in results[-4:]):
            assert time.monotonic() < deadline, "the new champion was never served"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert {status for status, _ in results} == {200}, [r for r in results if r[0] != 200][:5]
    versions = [version for _, version in results]
    assert versions[0] == "1" and versions[-1] == "2"
    assert httpx.get(f"{service.url}/readyz").json()["model"]["version"] == "2"


def test_mlflow_outage_keeps_serving_and_restarting(service: Service) -> None:
    from ray import serve

    from serve.app import pawfinder_app

    service.stop_mlflow.set()
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{service.mlflow_uri}/health", timeout=1)
        except httpx.TransportError:
            break
        assert time.monotonic() < deadline
        time.sleep(0.3)
    time.sleep(2 * service.settings.serve_poll_interval_s)  # the follower has met the outage
    answered = []
    for _ in range(5):
        response = _post_photo(service.url, PHOTO.read_bytes())
        assert response.status_code == 200, response.text
        assert response.json()["model"]["version"] == "2"
        answered.append(response.json()["prediction_id"])

    # A clean stop flushes the prediction log; a fresh deployment starts from the local copy while MLflow is down.
    serve.delete("pawfinder")
    store = open_prediction_store(service.settings)
    try:
        assert set(answered) <= set(store.predictions()["prediction_id"])
    finally:
        store.close()
    serve.run(pawfinder_app(service.settings), name="pawfinder", route_prefix="/")
    wait_http(f"{service.url}/readyz", timeout=120)
    assert httpx.get(f"{service.url}/readyz").json()["model"]["version"] == "2"
    _assert_prediction(_post_photo(service.url, PHOTO.read_bytes()).json(), version="2")


def test_not_ready_without_any_model(tmp_path: Path) -> None:
    """No registry and no local copy: /readyz and /predict answer 503 (in-process app, no Ray)."""
    from fastapi.testclient import TestClient

    from pawfinder.prediction_store import BackgroundWriter
    from serve.api import create_api
    from serve.metrics import ServeMetrics
    from serve.model_store import ModelStore
    from serve.runtime import ModelRuntime

    settings = Settings(home=tmp_path, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    runtime = ModelRuntime(ModelStore(settings, timeout_s=1))
    assert runtime.refresh() is False and runtime.current is None

    class LocalBackend:
        async def predict(self, image, top_k):  # type: ignore[no-untyped-def]
            return runtime.predict([image], [top_k])[0]

        async def model_info(self):  # type: ignore[no-untyped-def]
            return None

    writer = BackgroundWriter(open_prediction_store(settings))
    with TestClient(create_api(LocalBackend(), settings, writer, ServeMetrics())) as client:
        assert client.get("/readyz").status_code == 503
        response = client.post("/predict", files={"file": ("p.jpg", PHOTO.read_bytes())})
        assert response.status_code == 503 and response.json()["detail"]
        assert client.get("/healthz").status_code == 200


def test_cli_help() -> None:
    from typer.testing import CliRunner

    from pawfinder.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"], env={**os.environ, "COLUMNS": "120"})
    assert result.exit_code == 0 and "--ray-address" in result.output
