"""Evaluate an exported model on any dataset folder in the official layout, through the serving code path.

Images are decoded by :func:`pawfinder.data.images.decode_image`, preprocessed by the numpy eval transform and run
by :class:`pawfinder.inference.OnnxClassifier`, exactly as serving does; bad images are skipped and listed.
MLflow is imported lazily: evaluating a local ``.onnx`` file needs only the core install.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pawfinder.breeds import LABELS, NUM_CLASSES
from pawfinder.calibration import expected_calibration_error
from pawfinder.data.annotations import Annotation, read_annotations, split_trainval
from pawfinder.data.images import ImageDecodeError, decode_image
from pawfinder.data.layout import DatasetLayout, read_variants
from pawfinder.inference import OnnxClassifier, softmax
from pawfinder.preprocessing.numpy_ops import preprocess, preprocess_batch
from pawfinder.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

REPORT_KEYS = ("top1", "top5", "n", "ece", "macro_f1", "per_breed", "per_variant", "model")
EVALUATION_EXPERIMENT = "pawfinder-evaluation"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")
_LOGGED_MODEL_URI = re.compile(r"^models:/(?P<model_id>m-[0-9a-f]+)/?$")
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)(?:/.*)?$")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


class ModelLoadError(RuntimeError):
    """A model URI or path that cannot be turned into a runnable ONNX model; the message says what to do."""


@dataclass(frozen=True)
class ModelRef:
    """Which model was evaluated: registered ``name`` and ``version`` (``None`` for a file or run artifact)."""

    name: str
    version: str | None = None
    run_id: str | None = None
    uri: str = ""

    def to_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "version": self.version}


@dataclass(frozen=True)
class SkippedImage:
    """An image left out of the metrics, and why (a decode failure reason, ``missing`` or ``unreadable``)."""

    image: str
    reason: str
    message: str


@dataclass
class EvaluationReport:
    """Metrics of one model on one split; :meth:`to_dict` is the ``pawfinder evaluate --json`` contract."""

    top1: float
    top5: float
    n: int
    ece: float
    macro_f1: float
    per_breed: dict[str, float]
    per_variant: dict[str, dict[str, float | int]]
    model: ModelRef
    split: str
    data_dir: str
    skipped: list[SkippedImage] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Exactly :data:`REPORT_KEYS`."""
        values = asdict(self)
        values["model"] = self.model.to_dict()
        return {key: values[key] for key in REPORT_KEYS}

    def metrics(self, prefix: str) -> dict[str, float]:
        """Flat scalar metrics for MLflow, e.g. ``test_top1``, ``test_top1_original``, ``test_skipped``."""
        values = {f"{prefix}_{key}": float(getattr(self, key)) for key in ("top1", "top5", "n", "ece", "macro_f1")}
        values[f"{prefix}_skipped"] = float(len(self.skipped))
        for variant, stats in self.per_variant.items():
            values[f"{prefix}_top1_{variant}"] = float(stats["top1"])
        return values


def evaluate(
    model: OnnxClassifier,
    data_dir: Path,
    split: str = "test",
    *,
    settings: Settings,
    model_ref: ModelRef | None = None,
    batch_size: int = 32,
) -> EvaluationReport:
    """Top-1/top-5, ECE (calibrated probabilities), macro-F1, per-breed and per-variant accuracy on ``split``.

    ``split`` is ``test``/``trainval`` (``annotations/<split>.txt``) or ``train``/``val`` (trainval split with
    ``settings.val_fraction`` and ``settings.seed``, as in training). Undecodable or missing images are skipped and
    listed in ``report.skipped``.
    """
    layout = DatasetLayout(Path(data_dir))
    annotations = split_annotations(layout, split, settings)
    class_index = _class_index(model.metadata.labels, annotations)
    workers = settings.workers or None
    logits_parts: list[np.ndarray] = []
    kept: list[Annotation] = []
    skipped: list[SkippedImage] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for batch in _chunks(annotations, batch_size):
            loaded = list(pool.map(lambda a: _load(layout, a, model, settings), batch))
            arrays = [item for item in loaded if isinstance(item, np.ndarray)]
            skipped.extend(item for item in loaded if isinstance(item, SkippedImage))
            kept.extend(a for a, item in zip(batch, loaded, strict=True) if isinstance(item, np.ndarray))
            if arrays:
                logits, _ = model.run(np.stack(arrays))
                logits_parts.append(logits)
    if not kept:
        raise ValueError(
            f"none of the {len(annotations)} images of split {split!r} under {layout.images_dir} could be read "
            f"(first problem: {skipped[0].reason}: {skipped[0].message}); check the folder"
        )
    probs = softmax(np.concatenate(logits_parts), model.metadata.temperature)
    truth = np.array([class_index[a.label] for a in kept])
    variants = read_variants(layout)
    return EvaluationReport(
        **_metrics(probs, truth, model.metadata.labels),
        per_variant=_per_variant(probs, truth, [variants.get(a.image, "unknown") for a in kept]) if variants else {},
        model=model_ref or ModelRef(name=model.metadata.name),
        split=split,
        data_dir=str(layout.root),
        skipped=skipped,
    )


def split_annotations(layout: DatasetLayout, split: str, settings: Settings) -> list[Annotation]:
    """The annotations of ``split``: a file ``annotations/<split>.txt``, or ``train``/``val`` carved from trainval."""
    if split in ("train", "val"):
        source = layout.trainval_file
    elif re.fullmatch(r"[A-Za-z0-9_-]+", split):
        source = layout.annotations_dir / f"{split}.txt"
    else:
        raise ValueError(f"invalid split name {split!r}; use test, trainval, train or val")
    if not source.is_file():
        raise FileNotFoundError(
            f"{source} not found: --data-dir must point to a folder in the official layout "
            "(images/*.jpg and annotations/<split>.txt)"
        )
    annotations = read_annotations(source)
    if split in ("train", "val"):
        train, val = split_trainval(annotations, settings.val_fraction, settings.seed)
        annotations = train if split == "train" else val
    if not annotations:
        raise ValueError(f"{source} lists no images for split {split!r}")
    return annotations


def _class_index(model_labels: Sequence[str], annotations: Sequence[Annotation]) -> dict[str, int]:
    index = {label: i for i, label in enumerate(model_labels)}
    unknown = sorted({a.label for a in annotations} - index.keys())
    if unknown:
        raise ValueError(f"the model does not know the breeds {unknown}; evaluate it on data of its own classes")
    return index


def _chunks(items: Sequence[Annotation], size: int) -> Iterator[Sequence[Annotation]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _load(
    layout: DatasetLayout, annotation: Annotation, model: OnnxClassifier, settings: Settings
) -> np.ndarray | SkippedImage:
    """Decode and preprocess one image as serving does, or say why it was skipped."""
    path = layout.image_path(annotation.image)
    draft = (settings.serve_draft_size, settings.serve_draft_size)
    try:
        decoded = decode_image(path, max_pixels=settings.max_image_pixels, draft_size=draft)
    except ImageDecodeError as err:
        return SkippedImage(annotation.image, err.reason, err.message)
    except FileNotFoundError:
        return SkippedImage(annotation.image, "missing", f"{path} does not exist")
    except OSError as err:
        return SkippedImage(annotation.image, "unreadable", str(err))
    return preprocess(decoded.image, model.metadata.preprocessing)


def _metrics(probs: np.ndarray, truth: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Top-1, top-5, ECE, macro-F1 (over classes present in truth or predictions) and per-breed accuracy."""
    predicted = probs.argmax(axis=1)
    correct = predicted == truth
    k = min(5, probs.shape[1])
    top_k = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    f1_scores = []
    for c in np.union1d(truth, predicted):
        true_positive = np.sum((predicted == c) & (truth == c))
        denominator = np.sum(predicted == c) + np.sum(truth == c)
        f1_scores.append(2 * true_positive / denominator)
    return {
        "top1": float(correct.mean()),
        "top5": float((top_k == truth[:, None]).any(axis=1).mean()),
        "n": len(truth),
        "ece": expected_calibration_error(probs, truth),
        "macro_f1": float(np.mean(f1_scores)),
        "per_breed": {labels[c]: float(correct[truth == c].mean()) for c in np.unique(truth)},
    }


def _per_variant(probs: np.ndarray, truth: np.ndarray, variants: Sequence[str]) -> dict[str, dict[str, float | int]]:
    correct = probs.argmax(axis=1) == truth
    names = np.asarray(variants)
    return {
        str(v): {"top1": float(correct[names == v].mean()), "n": int((names == v).sum())} for v in sorted(set(variants))
    }


def smoke_check(model: OnnxClassifier) -> None:
    """One generated photo through the serving path: 37 known classes, finite probabilities summing to 1.

    Raises ``ValueError`` describing the first failed check.
    """
    metadata = model.metadata
    if len(metadata.labels) != NUM_CLASSES or set(metadata.labels) != set(LABELS):
        raise ValueError(f"the model has {len(metadata.labels)} labels; expected the {NUM_CLASSES} breeds")
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8))
    logits, embeddings = model.run(preprocess_batch([image], metadata.preprocessing))
    if logits.shape != (1, NUM_CLASSES):
        raise ValueError(f"logits have shape {logits.shape}; expected (1, {NUM_CLASSES})")
    if embeddings.shape != (1, metadata.embedding_dim):
        raise ValueError(f"embeddings have shape {embeddings.shape}; expected (1, {metadata.embedding_dim})")
    probs = softmax(logits, metadata.temperature)
    if not (np.isfinite(probs).all() and np.isfinite(embeddings).all()):
        raise ValueError("the model produced NaN or infinite outputs")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError(f"probabilities sum to {probs.sum():.6f}, not 1")
    prediction = model.predict([image], top_k=3)[0]
    if prediction.label not in metadata.labels:
        raise ValueError(f"predict() returned the unknown label {prediction.label!r}")


def load_model(model_uri: str, *, tracking_uri: str | None = None) -> tuple[OnnxClassifier, ModelRef]:
    """Load an ONNX model from a local ``.onnx`` file or folder, or from MLflow.

    MLflow URIs: ``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``models:/<model_id>`` (a logged model),
    ``runs:/<run_id>/<path>`` or anything
    ``mlflow.artifacts.download_artifacts`` accepts; the downloaded folder must hold exactly one ``*.onnx`` file.
    """
    local = Path(model_uri).expanduser()
    if local.exists():
        model = OnnxClassifier.from_path(local)
        return model, ModelRef(name=model.metadata.name, uri=str(local.resolve()))
    if not _URI_SCHEME.match(model_uri):
        raise ModelLoadError(f"{model_uri} is neither an existing .onnx file or folder nor a models:/ or runs:/ URI")
    ref, download_uri = _resolve(model_uri, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="pawfinder-model-") as folder:
        model = OnnxClassifier.from_path(_download(download_uri, folder, tracking_uri))
    return model, ModelRef(name=ref.name or model.metadata.name, version=ref.version, run_id=ref.run_id, uri=model_uri)


def _resolve(model_uri: str, tracking_uri: str | None) -> tuple[ModelRef, str]:
    """Identity of the model behind ``model_uri`` and a direct artifact URI to download it from.

    ``models:/`` URIs are resolved here because MLflow's downloader resolves them against the process-wide registry
    URI, ignoring the one passed; an alias is resolved once, so the download and the report agree.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if runs := _RUNS_URI.match(model_uri):
        return ModelRef(name="", run_id=runs["run_id"], uri=model_uri), model_uri
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if logged := _LOGGED_MODEL_URI.match(model_uri):
            logged_model = client.get_logged_model(logged["model_id"])
            return ModelRef(name="", run_id=logged_model.source_run_id, uri=model_uri), logged_model.artifact_location
        if models := _MODELS_URI.match(model_uri):
            if models["alias"]:
                version = client.get_model_version_by_alias(models["name"], models["alias"])
            else:
                version = client.get_model_version(models["name"], models["version"])
            ref = ModelRef(name=version.name, version=version.version, run_id=version.run_id, uri=model_uri)
            return ref, client.get_model_version_download_uri(version.name, version.version)
    except MlflowException as err:
        raise ModelLoadError(
            f"{model_uri} is not in the registry at {tracking_uri} ({err.message}); "
            "list versions and aliases with `pawfinder registry list`"
        ) from err
    return ModelRef(name="", uri=model_uri), model_uri


def _download(uri: str, folder: str, tracking_uri: str | None) -> Path:
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    try:
        return Path(download_artifacts(uri, dst_path=folder, tracking_uri=tracking_uri, registry_uri=tracking_uri))
    except (MlflowException, OSError) as err:
        raise ModelLoadError(f"could not download {uri} from {tracking_uri}: {err}; check the URI and server") from err


def log_evaluation(report: EvaluationReport, client: MlflowClient) -> str:
    """Record ``report`` in MLflow; returns the run id that holds its metrics.

    Metrics (``<split>_top1`` ...) go to the model version's source run (or the run of a ``runs:/`` URI, else a new
    run in experiment ``pawfinder-evaluation``), with the full report as ``evaluation/<split>.json``; a registered
    version also gets the scalar metrics as version tags, which the promotion gate reads.
    """
    from mlflow.entities import Metric

    metrics = report.metrics(report.split)
    now_ms = int(time.time() * 1000)
    run_id = report.model.run_id or _new_evaluation_run(report, client)
    client.log_batch(run_id, metrics=[Metric(key, value, now_ms, 0) for key, value in metrics.items()])
    payload = {**report.to_dict(), "split": report.split, "data_dir": report.data_dir}
    payload["skipped"] = [asdict(item) for item in report.skipped]
    client.log_text(run_id, json.dumps(payload, indent=2), f"evaluation/{report.split}.json")
    if report.model.version:
        for key, value in metrics.items():
            client.set_model_version_tag(report.model.name, report.model.version, key, f"{value:.6g}")
        client.set_model_version_tag(
            report.model.name, report.model.version, f"{report.split}_data_dir", report.data_dir
        )
    return run_id


def evaluate_version(
    name: str, version: str, *, client: MlflowClient, data_dir: Path, settings: Settings, split: str = "test"
) -> EvaluationReport:
    """Evaluate registered ``name`` ``version`` on ``data_dir`` and record the result (see :func:`log_evaluation`)."""
    model, ref = load_model(f"models:/{name}/{version}", tracking_uri=client.tracking_uri)
    report = evaluate(model, data_dir, split, settings=settings, model_ref=ref)
    log_evaluation(report, client)
    return report


def _new_evaluation_run(report: EvaluationReport, client: MlflowClient) -> str:
    experiment = client.get_experiment_by_name(EVALUATION_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EVALUATION_EXPERIMENT)
    tags = {"model_name": report.model.name, "model_uri": report.model.uri, "split": report.split}
    if report.model.version:
        tags["model_version"] = report.model.version
    run = client.create_run(experiment_id, tags=tags, run_name=f"evaluate-{report.model.name}-{report.split}")
    client.set_terminated(run.info.run_id)
    return run.info.run_id
