"""The Ray Serve application: a FastAPI ingress deployment in front of a dynamically batched ONNX model deployment.

Start it with ``pawfinder serve`` or ``serve run serve/config.yaml`` (import path ``serve.app:build_app``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from PIL import Image
from ray import serve
from ray.serve.handle import DeploymentHandle

from pawfinder.prediction_store import BackgroundWriter, open_prediction_store
from pawfinder.settings import Settings
from serve.api import create_api
from serve.metrics import ServeMetrics
from serve.model_store import ModelStore
from serve.runtime import ModelAnswer, ModelNotReadyError, ModelRuntime

logger = logging.getLogger(__name__)

CONCURRENT_BATCHES = 2


@serve.deployment(name="BreedClassifier")
class BreedClassifier:
    """Runs the served model on ONNX Runtime, batching concurrent requests, and follows the registry alias."""

    def __init__(self, settings: Settings) -> None:
        self.runtime = ModelRuntime(ModelStore(settings), intra_op_threads=settings.serve_intra_op_threads or None)
        try:
            self.runtime.refresh()
        except Exception:  # start anyway: /readyz says 503 and the follower keeps trying
            logger.exception("could not load a model at start")
        self._stop = threading.Event()
        threading.Thread(
            target=self.runtime.follow,
            args=(settings.serve_poll_interval_s, self._stop),
            name="champion-follower",
            daemon=True,
        ).start()
        self._classify.set_max_batch_size(settings.serve_max_batch_size)
        self._classify.set_batch_wait_timeout_s(settings.serve_batch_wait_timeout_s)

    # Batch size and wait come from settings (set above). Two batches in flight let one session use two cores
    # (runs are thread-safe) while each run stays single-threaded: no spinning thread pool fighting for CPUs.
    @serve.batch(max_concurrent_batches=CONCURRENT_BATCHES)
    async def _classify(self, images: list[Image.Image], top_ks: list[int]) -> list[ModelAnswer]:
        return await asyncio.to_thread(self.runtime.predict, images, top_ks)

    async def predict(self, image: Image.Image, top_k: int) -> ModelAnswer:
        """Classify one image, batched with whatever else arrives within the batch wait timeout."""
        return await self._classify(image, top_k)

    def model_info(self) -> dict[str, Any] | None:
        """The loaded model's name, version and settings; ``None`` before one is loaded."""
        model = self.runtime.current
        return None if model is None else model.info()

    def __del__(self) -> None:
        self._stop.set()


class HandleBackend:
    """The API's view of the model deployment (see ``serve.api.ClassifierBackend``)."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    async def predict(self, image: Image.Image, top_k: int) -> ModelAnswer:
        try:
            return await self._handle.predict.remote(image, top_k)
        except ModelNotReadyError:  # Ray re-raises it wrapped in its own error type; unwrap for the API's 503
            raise ModelNotReadyError("no model is loaded yet; see /readyz") from None

    async def model_info(self) -> dict[str, Any] | None:
        return await self._handle.model_info.remote()


@serve.deployment(name="PawFinderAPI")
@serve.ingress()
class PawFinderAPI:
    """HTTP ingress: input checks and decoding, prediction log, metrics; the model runs in ``BreedClassifier``."""

    def __init__(self, classifier: DeploymentHandle, settings: Settings) -> None:
        self._backend = HandleBackend(classifier)
        self._settings = settings

    def __serve_build_asgi_app__(self) -> FastAPI:
        writer = BackgroundWriter(open_prediction_store(self._settings))
        return create_api(self._backend, self._settings, writer, ServeMetrics())


def _absolute_paths(settings: Settings) -> Settings:
    """Replicas may run in another working directory: make every path setting absolute."""
    updates = {name: value.resolve() for name, value in settings if isinstance(value, Path)}
    return settings.model_copy(update=updates)


def pawfinder_app(settings: Settings) -> serve.Application:
    """The application graph, sized from ``settings``."""
    settings = _absolute_paths(settings)
    logging_config = {"enable_access_log": settings.serve_access_log}
    classifier = BreedClassifier.options(
        num_replicas=settings.serve_model_replicas,
        max_ongoing_requests=2 * CONCURRENT_BATCHES * settings.serve_max_batch_size,
        ray_actor_options={"num_cpus": settings.serve_model_cpus},
        logging_config=logging_config,
    ).bind(settings)
    return PawFinderAPI.options(
        max_ongoing_requests=settings.serve_max_ongoing_requests,
        ray_actor_options={"num_cpus": settings.serve_api_cpus},
        logging_config=logging_config,
    ).bind(classifier, settings)


def start_serve(settings: Settings) -> None:
    """Start Ray Serve's proxy on ``settings.host:settings.serve_port`` (127.0.0.1 by default) on the connected Ray."""
    serve.start(
        http_options={"host": settings.host, "port": settings.serve_port},
        proxy_location="HeadOnly",
        logging_config={"enable_access_log": settings.serve_access_log},
    )


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for ``serve run``: ``args`` override ``PAWFINDER_*`` settings (same field names)."""
    return pawfinder_app(Settings(**args))
