"""The model being served: loaded through ``pawfinder.inference``, replaced atomically when the champion changes."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from pawfinder.inference import OnnxClassifier, Prediction
from serve.model_store import ModelStore

logger = logging.getLogger(__name__)


class ModelNotReadyError(RuntimeError):
    """No model has been loaded yet (registry unreachable and no local copy, or alias not set)."""


@dataclass(frozen=True)
class LoadedModel:
    """A model version with its ONNX Runtime session."""

    name: str
    version: str
    classifier: OnnxClassifier

    def info(self) -> dict[str, object]:
        """What /readyz reports about the model."""
        meta = self.classifier.metadata
        return {
            "name": self.name,
            "version": self.version,
            "backbone": meta.backbone,
            "input_size": meta.preprocessing.crop_size,
            "temperature": meta.temperature,
            "ood_threshold": meta.ood_threshold,
        }


@dataclass(frozen=True)
class ModelAnswer:
    """One image's prediction, with the model version that made it and the size of the batch it ran in."""

    prediction: Prediction
    model_name: str
    model_version: str
    batch_size: int


class ModelRuntime:
    """Holds the current model; :meth:`refresh` swaps in a new version by replacing one reference.

    A batch takes the reference once at its start, so in-flight requests finish on the model they started with and
    nothing ever sees a half-loaded model.
    """

    def __init__(self, store: ModelStore, *, intra_op_threads: int | None = None) -> None:
        self.store = store
        self.intra_op_threads = intra_op_threads
        self._current: LoadedModel | None = None
        self._refresh_lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        """The model answering requests now, if any."""
        return self._current

    def refresh(self) -> bool:
        """Load the wanted model if it differs from the current one; True when a new version was swapped in."""
        with self._refresh_lock:
            ref = self.store.wanted()
            current = self._current
            if ref is None or (current is not None and current.version == ref.version):
                return False
            classifier = OnnxClassifier.from_path(ref.path, intra_op_threads=self.intra_op_threads)
            self._current = LoadedModel(ref.name, ref.version, classifier)
            self.store.remember(ref)
            logger.info("now serving %s version %s (was %s)", ref.name, ref.version, current and current.version)
            return True

    def follow(self, interval_s: float, stop: threading.Event) -> None:
        """Call :meth:`refresh` every ``interval_s`` seconds until ``stop`` is set; errors are logged, never raised."""
        while not stop.wait(interval_s):
            try:
                self.refresh()
            except Exception:  # a broken new version must not take down the one being served
                logger.exception("model refresh failed; still serving %s", self._current and self._current.version)

    def predict(self, images: Sequence[Image.Image], top_ks: Sequence[int]) -> list[ModelAnswer]:
        """Classify a batch with one model version; each image gets its own ``top_k`` entries."""
        model = self._current
        if model is None:
            raise ModelNotReadyError("no model is loaded yet; see /readyz")
        predictions = model.classifier.predict(images, top_k=max(top_ks))
        return [
            ModelAnswer(
                prediction=dataclasses.replace(prediction, top_k=prediction.top_k[:k]),
                model_name=model.name,
                model_version=model.version,
                batch_size=len(images),
            )
            for prediction, k in zip(predictions, top_ks, strict=True)
        ]
