"""The Ray Serve application: one deployment that is both the FastAPI ingress and the batched ONNX Runtime model.

Each replica decodes uploads, batches concurrent images with ``@serve.batch`` into single-threaded ONNX Runtime
runs, logs every answer and follows the registry alias. Keeping the model in the ingress replica saves a Ray hop and
an image copy per request (about a quarter of the CPU per image on the 2-core reference machine); scale out with
``PAWFINDER_SERVE_MODEL_REPLICAS``.

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

from pawfinder.prediction_store import BackgroundWriter, open_prediction_store
from pawfinder.settings import Settings
from serve.api import create_api
from serve.metrics import ServeMetrics
from serve.model_store import ModelStore
from serve.runtime import ModelAnswer, ModelRuntime

logger = logging.getLogger(__name__)

#: Batches one replica runs at once. Two let single-threaded sessions (runs are thread-safe) use two cores without
#: a spinning intra-op thread pool competing with request handling for the CPUs.
CONCURRENT_BATCHES = 2


@serve.deployment(name="PawFinder")
@serve.ingress()
class PawFinderService:
    """HTTP API (``serve.api``) plus the model: ONNX Runtime with dynamic batching, hot-swapped on a new champion."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
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

    def __serve_build_asgi_app__(self) -> FastAPI:
        writer = BackgroundWriter(open_prediction_store(self._settings))
        return create_api(self, self._settings, writer, ServeMetrics())

    @serve.batch(max_concurrent_batches=CONCURRENT_BATCHES)  # size and wait are set per replica in __init__
    async def _classify(self, images: list[Image.Image], top_ks: list[int]) -> list[ModelAnswer]:
        return await asyncio.to_thread(self.runtime.predict, images, top_ks)

    async def predict(self, image: Image.Image, top_k: int) -> ModelAnswer:
        """Classify one image, batched with whatever else arrives within the batch wait timeout."""
        return await self._classify(image, top_k)

    async def model_info(self) -> dict[str, Any] | None:
        """The loaded model's name, version and settings; ``None`` before one is loaded."""
        model = self.runtime.current
        return None if model is None else model.info()

    def __del__(self) -> None:
        self._stop.set()


def _absolute_paths(settings: Settings) -> Settings:
    """Replicas may run in another working directory: make every path setting absolute."""
    updates = {name: value.resolve() for name, value in settings if isinstance(value, Path)}
    return settings.model_copy(update=updates)


def pawfinder_app(settings: Settings) -> serve.Application:
    """The application, sized from ``settings``."""
    settings = _absolute_paths(settings)
    batch_capacity = CONCURRENT_BATCHES * settings.serve_max_batch_size  # fewer ongoing requests could not fill them
    return PawFinderService.options(
        num_replicas=settings.serve_model_replicas,
        max_ongoing_requests=max(settings.serve_max_ongoing_requests, batch_capacity),
        ray_actor_options={"num_cpus": settings.serve_model_cpus},
        logging_config={"enable_access_log": settings.serve_access_log},
    ).bind(settings)


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
