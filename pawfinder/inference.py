"""Torch-free inference on an exported ONNX model: the one path used by serving and evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from pawfinder.breeds import by_label
from pawfinder.modelmeta import METADATA_KEY, ModelMetadata
from pawfinder.preprocessing.numpy_ops import preprocess_batch

INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "embedding")


class ModelFormatError(ValueError):
    """The file is not a PawFinder ONNX model (missing metadata, wrong inputs/outputs)."""


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / temperature)`` along the last axis, numerically stable."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def ood_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Max calibrated softmax probability per row: higher means more like a known breed (a pet)."""
    return softmax(logits, temperature).max(axis=-1)


@dataclass(frozen=True)
class Prediction:
    """The answer for one image: best breed, calibrated confidence, pet/not-pet decision, top-k and embedding."""

    label: str
    breed: str
    species: str
    confidence: float
    is_pet: bool
    ood_score: float
    top_k: list[dict[str, Any]]
    embedding: np.ndarray = field(repr=False)

    def to_dict(self, *, include_embedding: bool = False) -> dict[str, Any]:
        """JSON-ready form; the embedding (a float list) only on request."""
        out: dict[str, Any] = {
            "label": self.label,
            "breed": self.breed,
            "species": self.species,
            "confidence": self.confidence,
            "is_pet": self.is_pet,
            "ood_score": self.ood_score,
            "top_k": self.top_k,
        }
        if include_embedding:
            out["embedding"] = self.embedding.tolist()
        return out


def find_onnx_file(path: Path) -> Path:
    """``path`` itself, or the single ``*.onnx`` file in directory ``path`` (e.g. a downloaded MLflow model)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"no model at {path}")
    found = sorted(path.rglob("*.onnx"))
    if len(found) != 1:
        raise ModelFormatError(f"expected exactly one .onnx file under {path}, found {len(found)}")
    return found[0]


def _providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxClassifier:
    """An ONNX Runtime session plus the model's :class:`ModelMetadata`."""

    def __init__(self, session: ort.InferenceSession, metadata: ModelMetadata, source: str):
        self._session = session
        self._metadata = metadata
        self.source = source
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if inputs != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
            raise ModelFormatError(
                f"{source}: expected input {INPUT_NAME!r} and outputs {OUTPUT_NAMES}, got {inputs} and {outputs}"
            )

    @classmethod
    def from_path(cls, path: str | Path, *, intra_op_threads: int | None = None) -> OnnxClassifier:
        """Load a model file (or a directory holding exactly one); ``intra_op_threads`` None = ONNX Runtime default."""
        model_file = find_onnx_file(Path(path))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
            options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(model_file), sess_options=options, providers=_providers())
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelFormatError(f"{model_file} is not a loadable ONNX model: {exc}") from exc
        raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise ModelFormatError(
                f"{model_file} has no {METADATA_KEY!r} metadata: export it with pawfinder.models.onnx_export"
            )
        return cls(session, ModelMetadata.from_json(raw), str(model_file))

    @property
    def metadata(self) -> ModelMetadata:
        """Labels, preprocessing spec, temperature and OOD threshold stored in the model."""
        return self._metadata

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs for a preprocessed float32 batch (N, 3, H, W): logits (N, classes) and embeddings (N, D)."""
        size = self._metadata.preprocessing.crop_size
        if batch.ndim != 4 or batch.shape[1:] != (3, size, size):
            raise ValueError(f"expected a batch of shape (N, 3, {size}, {size}), got {batch.shape}")
        logits, embeddings = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch.astype(np.float32, copy=False)})
        return logits, embeddings

    def predict(self, images: Sequence[Image.Image], top_k: int = 3) -> list[Prediction]:
        """Preprocess (numpy path from the stored spec), run, calibrate; one :class:`Prediction` per image."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if not images:
            return []
        meta = self._metadata
        logits, embeddings = self.run(preprocess_batch(images, meta.preprocessing))
        probs = softmax(logits, meta.temperature)
        k = min(top_k, len(meta.labels))
        predictions = []
        for row, embedding in zip(probs, embeddings, strict=True):
            order = np.argsort(-row, kind="stable")[:k]
            ranked = [self._entry(meta.labels[i], float(row[i])) for i in order]
            best = ranked[0]
            predictions.append(
                Prediction(
                    label=best["label"],
                    breed=best["breed"],
                    species=best["species"],
                    confidence=best["confidence"],
                    is_pet=best["confidence"] >= meta.ood_threshold,
                    ood_score=best["confidence"],
                    top_k=ranked,
                    embedding=embedding,
                )
            )
        return predictions

    @staticmethod
    def _entry(label: str, confidence: float) -> dict[str, Any]:
        breed = by_label(label)
        return {"label": label, "breed": breed.name, "species": breed.species, "confidence": confidence}
