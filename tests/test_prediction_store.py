"""The prediction log: durable SQLite WAL store, background writer, feedback join, embedding projection."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pawfinder.prediction_store import (
    EMBEDDING_DIM,
    BackgroundWriter,
    PredictionRecord,
    SQLitePredictionStore,
    UnknownPredictionError,
    open_prediction_store,
    project_embedding,
)
from pawfinder.settings import Settings


def _record(label: str = "pug", **overrides: object) -> PredictionRecord:
    values: dict[str, object] = {
        "model_name": "pawfinder",
        "model_version": "3",
        "label": label,
        "confidence": 0.9,
        "top_k": [{"label": label, "breed": "Pug", "species": "dog", "confidence": 0.9}],
        "is_pet": True,
        "ood_score": 0.9,
        "image_sha256": "ab" * 32,
        "image_bytes": 1234,
        "image_format": "JPEG",
        "image_width": 500,
        "image_height": 375,
        "latency_ms": 12.5,
        "embedding": np.arange(EMBEDDING_DIM, dtype=np.float32),
    }
    values.update(overrides)
    return PredictionRecord(**values)  # type: ignore[arg-type]


def test_default_store_is_sqlite_wal_under_home() -> None:
    settings = Settings()
    store = open_prediction_store(settings)
    try:
        assert isinstance(store, SQLitePredictionStore)
        assert store.path == settings.home / "predictions.db"
        mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    finally:
        store.close()


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unsupported prediction store URL"):
        open_prediction_store(Settings(prediction_store_url="postgres://db/predictions"))


def test_append_read_and_feedback_join(tmp_path: Path) -> None:
    store = SQLitePredictionStore(tmp_path / "log.db")
    first, second = _record("pug"), _record("Bengal", is_pet=False, created_at=time.time() + 1)
    store.append([first, second])
    store.add_feedback(first.prediction_id, "beagle")
    store.add_feedback(first.prediction_id, "pug")  # latest feedback wins

    frame = store.predictions(with_embeddings=True)
    assert list(frame["prediction_id"]) == [second.prediction_id, first.prediction_id]  # newest first
    row = frame.set_index("prediction_id").loc[first.prediction_id]
    assert row["feedback_label"] == "pug"
    assert row["top_k"][0]["label"] == "pug"
    assert bool(row["is_pet"]) is True
    np.testing.assert_array_equal(row["embedding"], first.embedding)
    assert frame.set_index("prediction_id").loc[second.prediction_id, "feedback_label"] is None
    assert "embedding" not in store.predictions(limit=1).columns
    assert len(store.predictions(limit=1)) == 1

    with pytest.raises(UnknownPredictionError):
        store.add_feedback("no-such-id", "pug")
    with pytest.raises(ValueError, match="unknown breed label"):
        store.add_feedback(first.prediction_id, "unicorn")
    store.close()


def test_raw_images_only_when_configured(tmp_path: Path) -> None:
    kept = SQLitePredictionStore(tmp_path / "kept.db", image_dir=tmp_path / "images")
    kept.append([_record(image=b"jpeg bytes")])
    path = Path(kept.predictions()["image_path"][0])
    assert path.read_bytes() == b"jpeg bytes"
    kept.close()

    plain = SQLitePredictionStore(tmp_path / "plain.db")
    plain.append([_record(image=b"jpeg bytes")])
    assert plain.predictions()["image_path"][0] is None
    plain.close()


def test_background_writer_batches_and_loses_nothing_on_close(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    writer = BackgroundWriter(SQLitePredictionStore(path), max_batch=50)
    threads = [threading.Thread(target=lambda: [writer.submit(_record()) for _ in range(100)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    reopened = SQLitePredictionStore(path)
    assert len(reopened.predictions()) == 400
    reopened.close()


def test_flush_makes_records_visible_for_feedback(tmp_path: Path) -> None:
    writer = BackgroundWriter(SQLitePredictionStore(tmp_path / "log.db"))
    record = _record()
    writer.submit(record)
    writer.flush()
    writer.store.add_feedback(record.prediction_id, "pug")
    writer.close()


def test_projection_is_fixed_and_distance_preserving() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((20, 1280)).astype(np.float32)
    projected = project_embedding(vectors)
    assert projected.shape == (20, EMBEDDING_DIM) and projected.dtype == np.float32
    np.testing.assert_allclose(project_embedding(vectors[3]), projected[3], rtol=1e-4, atol=1e-4)
    original = np.linalg.norm(vectors[0] - vectors[1])
    assert 0.6 < np.linalg.norm(projected[0] - projected[1]) / original < 1.4
