"""Shared test fixtures: one real MLflow server and one real Ray instance per pytest session, all on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from pawfinder.settings import Settings
from pawfinder.stack.serve_ingress import serve_ingress_env

FIXTURES = Path(__file__).parent / "fixtures"

# Ray binds every interface unless told otherwise; these must be set before Ray is imported anywhere.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.update(serve_ingress_env(Settings()))  # the session's Ray serves through the default ingress (HAProxy)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200 or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def _wait_jobs_api(dashboard: str, timeout: float) -> None:
    """Wait until the Ray Jobs API answers (the client sends Ray's auth token, which ray.init generated)."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while True:
        try:
            JobSubmissionClient(dashboard).list_jobs()
            return
        except (ConnectionError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own PAWFINDER_HOME so that no state leaks between tests or into the repo."""
    monkeypatch.setenv("PAWFINDER_HOME", str(tmp_path / "pawfinder-home"))
    for name in ("PAWFINDER_DATA_DIR", "PAWFINDER_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking + registry server (SQLite backend, local artifact store). Yields its URI."""
    with run_mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@contextmanager
def run_mlflow_server(root: Path) -> Iterator[str]:
    """Run an MLflow server with its state under ``root`` for the ``with`` block (for tests that stop it early)."""
    port = free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"),
        ],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no GenAI job workers
        start_new_session=True,  # its own process group: stopping it stops its uvicorn workers too
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", timeout=120)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[dict[str, str]]:
    """One local Ray head (in-process, loopback only, own temp dir, dashboard for the Jobs API) per session.

    Yields ``{"address": <gcs address>, "dashboard": <http url>}``. ``ray.shutdown()`` stops exactly what it started.
    """
    import ray

    temp_dir = tempfile.mkdtemp(prefix="pfray-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    dashboard_port = free_port()
    context = ray.init(
        num_cpus=4,
        _node_ip_address="127.0.0.1",
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        _temp_dir=temp_dir,
        log_to_driver=False,
    )
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_jobs_api(dashboard, timeout=120)
        yield {"address": context.address_info["gcs_address"], "dashboard": dashboard}
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init MobileNetV2 PawNet (37 classes) exported with its metadata at 64x64 input: small and fast."""
    import torch

    from pawfinder.models.backbones import build_model
    from pawfinder.models.onnx_export import export_onnx, metadata_for
    from pawfinder.preprocessing.spec import PreprocessSpec

    torch.manual_seed(0)
    model = build_model("mobilenet_v2", pretrained=False)
    metadata = metadata_for(model, "pawfinder", temperature=1.5)
    spec = PreprocessSpec(**{**metadata.preprocessing.model_dump(), "resize_size": 72, "crop_size": 64})
    metadata = metadata.model_copy(update={"preprocessing": spec})
    return export_onnx(model, tmp_path_factory.mktemp("tiny-onnx") / "model.onnx", metadata)
