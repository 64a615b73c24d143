"""Durable log of every served prediction and of the feedback users give on it.

Serving appends through a :class:`BackgroundWriter` (a response never waits on the disk); monitoring and the console
read the same store through :func:`open_prediction_store` without importing ``serve/``. The default backend is SQLite
in WAL mode under ``PAWFINDER_HOME``; another backend only has to implement the :class:`PredictionStore` protocol and
be added to ``_BACKENDS``.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from pawfinder.breeds import by_label
from pawfinder.settings import Settings

logger = logging.getLogger(__name__)

#: Stored embeddings are this many dimensions: a fixed random projection of the model's penultimate layer.
EMBEDDING_DIM = 64
_PROJECTION_SEED = 20240917


@dataclass
class PredictionRecord:
    """One answered prediction, as logged. ``embedding`` is already projected (see :func:`project_embedding`)."""

    model_name: str
    model_version: str
    label: str
    confidence: float
    top_k: list[dict[str, Any]]
    is_pet: bool
    ood_score: float
    image_sha256: str
    image_bytes: int
    image_format: str
    image_width: int
    image_height: int
    latency_ms: float
    embedding: np.ndarray
    prediction_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)
    image: bytes | None = field(default=None, repr=False)  # the raw upload, only kept when configured


class UnknownPredictionError(KeyError):
    """Feedback names a prediction id that the store does not hold."""


class PredictionStore(Protocol):
    """What serving, monitoring and the console need from a prediction log."""

    def append(self, records: Sequence[PredictionRecord]) -> None:
        """Persist ``records`` atomically."""
        ...

    def add_feedback(self, prediction_id: str, label: str) -> None:
        """Record the true ``label`` of a prediction (latest wins).

        Raises ``ValueError`` for a label that is not a breed, :class:`UnknownPredictionError` for an unknown id.
        """
        ...

    def predictions(
        self, *, since: float | None = None, limit: int | None = None, with_embeddings: bool = False
    ) -> pd.DataFrame:
        """Logged predictions (newest first) joined with their feedback (``feedback_label``, ``feedback_at``)."""
        ...

    def close(self) -> None:
        """Release the backend's resources."""
        ...


@lru_cache(maxsize=8)
def _projection(input_dim: int, output_dim: int) -> np.ndarray:
    rng = np.random.default_rng(_PROJECTION_SEED)
    return (rng.standard_normal((input_dim, output_dim)) / np.sqrt(output_dim)).astype(np.float32)


def project_embedding(embedding: np.ndarray, dim: int = EMBEDDING_DIM) -> np.ndarray:
    """Fixed Gaussian random projection of embeddings (..., D) to (..., ``dim``) float32; preserves distances roughly.

    The matrix depends only on D and ``dim``, so reference embeddings projected here are comparable with logged ones.
    """
    vectors = np.asarray(embedding, dtype=np.float32)
    return vectors @ _projection(vectors.shape[-1], dim)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    prediction_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    label TEXT NOT NULL,
    confidence REAL NOT NULL,
    top_k TEXT NOT NULL,
    is_pet INTEGER NOT NULL,
    ood_score REAL NOT NULL,
    image_sha256 TEXT NOT NULL,
    image_bytes INTEGER NOT NULL,
    image_format TEXT NOT NULL,
    image_width INTEGER NOT NULL,
    image_height INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    embedding BLOB NOT NULL,
    image_path TEXT
);
CREATE INDEX IF NOT EXISTS predictions_created_at ON predictions (created_at);
CREATE TABLE IF NOT EXISTS feedback (
    prediction_id TEXT PRIMARY KEY REFERENCES predictions (prediction_id),
    label TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""
_COLUMNS = (
    "prediction_id", "created_at", "model_name", "model_version", "label", "confidence", "top_k", "is_pet",
    "ood_score", "image_sha256", "image_bytes", "image_format", "image_width", "image_height", "latency_ms",
    "embedding", "image_path",
)  # fmt: skip


class SQLitePredictionStore:
    """SQLite (WAL) prediction log; safe for several processes, and for several threads of one process."""

    def __init__(self, path: Path, *, image_dir: Path | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.image_dir = image_dir
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def append(self, records: Sequence[PredictionRecord]) -> None:
        rows = [self._row(record) for record in records]
        placeholders = ", ".join("?" * len(_COLUMNS))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    f"INSERT OR IGNORE INTO predictions ({', '.join(_COLUMNS)}) VALUES ({placeholders})",  # noqa: S608
                    rows,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def add_feedback(self, prediction_id: str, label: str) -> None:
        try:
            by_label(label)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        with self._lock:
            known = self._db.execute("SELECT 1 FROM predictions WHERE prediction_id = ?", (prediction_id,)).fetchone()
            if known is None:
                raise UnknownPredictionError(prediction_id)
            self._db.execute(
                "INSERT OR REPLACE INTO feedback (prediction_id, label, created_at) VALUES (?, ?, ?)",
                (prediction_id, label, time.time()),
            )

    def predictions(
        self, *, since: float | None = None, limit: int | None = None, with_embeddings: bool = False
    ) -> pd.DataFrame:
        columns = [f"p.{name}" for name in _COLUMNS if with_embeddings or name != "embedding"]
        query = (
            f"SELECT {', '.join(columns)}, f.label AS feedback_label, f.created_at AS feedback_at "  # noqa: S608
            "FROM predictions p LEFT JOIN feedback f USING (prediction_id) "
            "WHERE p.created_at >= ? ORDER BY p.created_at DESC LIMIT ?"
        )
        with self._lock:
            frame = pd.read_sql_query(query, self._db, params=(since or 0.0, -1 if limit is None else limit))
        frame["is_pet"] = frame["is_pet"].astype(bool)
        frame["top_k"] = frame["top_k"].map(json.loads)
        if with_embeddings:
            frame["embedding"] = frame["embedding"].map(lambda blob: np.frombuffer(blob, dtype=np.float32))
        return frame

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _row(self, record: PredictionRecord) -> tuple[Any, ...]:
        return (
            record.prediction_id, record.created_at, record.model_name, record.model_version, record.label,
            float(record.confidence), json.dumps(record.top_k), int(record.is_pet), float(record.ood_score),
            record.image_sha256, record.image_bytes, record.image_format, record.image_width, record.image_height,
            float(record.latency_ms), np.asarray(record.embedding, dtype=np.float32).tobytes(),
            self._save_image(record),
        )  # fmt: skip

    def _save_image(self, record: PredictionRecord) -> str | None:
        """Store the raw upload content-addressed under ``image_dir`` when configured; return its path."""
        if self.image_dir is None or record.image is None:
            return None
        target = self.image_dir / record.image_sha256[:2] / record.image_sha256
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{uuid.uuid4().hex}.part")
            partial.write_bytes(record.image)
            partial.replace(target)
        return str(target)


def _sqlite_store(location: str, settings: Settings) -> PredictionStore:
    """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``."""
    image_dir = settings.home / "prediction-images" if settings.serve_store_images else None
    return SQLitePredictionStore(Path(location), image_dir=image_dir)


_BACKENDS: dict[str, Callable[[str, Settings], PredictionStore]] = {"sqlite": _sqlite_store}


def prediction_store_url(settings: Settings) -> str:
    """The configured store URL; default ``sqlite:///<home>/predictions.db``."""
    return settings.prediction_store_url or f"sqlite:///{settings.home / 'predictions.db'}"


def open_prediction_store(settings: Settings) -> PredictionStore:
    """Open the prediction log that ``settings`` configure (``PAWFINDER_PREDICTION_STORE_URL``)."""
    url = prediction_store_url(settings)
    scheme, sep, location = url.partition(":///")
    if not sep or scheme not in _BACKENDS:
        raise ValueError(f"unsupported prediction store URL {url!r}; expected one of: {', '.join(_BACKENDS)}:///…")
    return _BACKENDS[scheme](location, settings)


class BackgroundWriter:
    """Appends records to a store from a daemon thread, in batches, so that callers never wait on the disk.

    ``submit`` only enqueues (it never blocks). ``flush`` waits until everything submitted before it is committed;
    ``close`` flushes and stops the thread (call it on shutdown: nothing queued is lost on a clean stop).
    """

    def __init__(self, store: PredictionStore, *, max_batch: int = 256, max_queue: int = 10_000) -> None:
        self.store = store
        self.max_batch = max_batch
        self.dropped = 0
        self._queue: queue.Queue[PredictionRecord | threading.Event | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="prediction-writer", daemon=True)
        self._thread.start()

    def submit(self, record: PredictionRecord) -> bool:
        """Queue ``record``; when ``max_queue`` records are already waiting it is dropped (counted and logged)."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            logger.error("prediction log queue is full; dropped prediction %s", record.prediction_id)
            return False
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record submitted before this call is committed (or failed and was logged)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self) -> None:
        """Flush, stop the writer thread and close the store."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self.store.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [item for item in batch if isinstance(item, PredictionRecord)]
            try:
                if records:
                    self.store.append(records)
            except Exception:  # a failing disk must not kill serving; the error is logged with the lost ids
                logger.exception("could not log %d predictions: %s", len(records), [r.prediction_id for r in records])
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()
                stopping = stopping or item is None
