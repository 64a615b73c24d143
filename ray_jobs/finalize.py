"""Turn the best checkpoint into the served artefact: calibrate, fit the OOD threshold, export, log, register.

Calibration and the OOD threshold are fitted on the logits of the exported ONNX model run by
:class:`pawfinder.inference.OnnxClassifier` on the numpy-preprocessed validation images, i.e. exactly what serving
computes. The final ONNX file carries spec, labels, temperature and OOD threshold in its metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.models import infer_signature

from pawfinder.breeds import LABELS, by_label
from pawfinder.calibration import expected_calibration_error, fit_temperature
from pawfinder.data.images import decode_image
from pawfinder.evaluation import ModelRef, evaluate, log_evaluation
from pawfinder.inference import OnnxClassifier, ood_score, softmax
from pawfinder.modelmeta import ModelMetadata
from pawfinder.models.backbones import PawNet, build_model
from pawfinder.models.onnx_export import export_onnx, metadata_for, onnx_parity
from pawfinder.models.onnx_files import replace_metadata
from pawfinder.models.quantize import quantize_int8
from pawfinder.preprocessing.numpy_ops import preprocess_batch, preprocessed_batches
from pawfinder.registry import register
from pawfinder.settings import Settings
from ray_jobs.checkpoints import TrainState
from ray_jobs.config import TrainConfig
from ray_jobs.ood import OodThreshold, fit_ood_threshold, synthetic_non_pets
from ray_jobs.reports import (
    confusion_matrix,
    learning_curves,
    misclassified_grid,
    per_breed_accuracy,
    write_confusion_matrix,
)
from ray_jobs.tracking import log_metrics

MODEL_ARTIFACT = "model"
MAX_GRID_IMAGES = 36


@dataclass(frozen=True)
class Calibrated:
    """Validation predictions of the exported model and what was fitted on them."""

    logits: np.ndarray
    truth: np.ndarray
    temperature: float
    ece_before: float
    ece_after: float
    ood: OodThreshold

    @property
    def probs(self) -> np.ndarray:
        return softmax(self.logits, self.temperature)

    def metrics(self) -> dict[str, float]:
        values = {"val_top1": _top1(self.logits, self.truth), "temperature": self.temperature}
        values |= {"val_ece_before": self.ece_before, "val_ece_after": self.ece_after}
        return values | self.ood.metrics()


def best_model(state: TrainState, config: TrainConfig, settings: Settings) -> PawNet:
    """The best model of the run (CPU, eval mode)."""
    weights = settings.mobilenet_v2_weights if config.backbone == "mobilenet_v2" else None
    model = build_model(config.backbone, pretrained=False, weights_path=weights, dropout=config.dropout)
    model.load_state_dict(state.best_model)
    return model.eval()


def _images(paths: list[str], settings: Settings) -> list:
    return [decode_image(Path(p), max_pixels=settings.max_image_pixels).image for p in paths]


def onnx_logits(classifier: OnnxClassifier, paths: list[str], settings: Settings) -> np.ndarray:
    """Logits of the exported model for the cached images at ``paths`` (decoded and preprocessed as serving does)."""
    batches = preprocessed_batches(paths, classifier.metadata.preprocessing, max_pixels=settings.max_image_pixels)
    return np.concatenate([classifier.run(batch)[0] for batch in batches])


def _top1(logits: np.ndarray, truth: np.ndarray) -> float:
    return float((logits.argmax(1) == truth).mean())


def calibrate(classifier: OnnxClassifier, logits: np.ndarray, truth: np.ndarray) -> Calibrated:
    """Temperature (min val NLL), ECE before/after, and the OOD threshold (see :mod:`ray_jobs.ood`), from the
    model's val ``logits`` and the ``truth`` indices."""
    temperature = fit_temperature(logits, truth)
    non_pets = classifier.run(preprocess_batch(synthetic_non_pets(), classifier.metadata.preprocessing))[0]
    return Calibrated(
        logits=logits,
        truth=truth,
        temperature=temperature,
        ece_before=expected_calibration_error(softmax(logits), truth),
        ece_after=expected_calibration_error(softmax(logits, temperature), truth),
        ood=fit_ood_threshold(ood_score(logits, temperature), ood_score(non_pets, temperature)),
    )


def write_reports(
    calibrated: Calibrated, val_rows: pd.DataFrame, history: list[dict], settings: Settings, folder: Path
) -> None:
    """Confusion matrix, per-breed accuracy, misclassified grid and learning curves of the validation split."""
    probs = calibrated.probs
    predicted = probs.argmax(1)
    write_confusion_matrix(confusion_matrix(calibrated.truth, predicted, len(LABELS)), LABELS, folder)
    per_breed_accuracy(calibrated.truth, predicted, LABELS).to_csv(folder / "per_breed_accuracy.csv", index=False)
    wrong = np.flatnonzero(predicted != calibrated.truth)
    wrong = wrong[np.argsort(-probs[wrong].max(1), kind="stable")][:MAX_GRID_IMAGES]  # most confident first
    misclassified_grid(
        _images([val_rows["path"].iloc[i] for i in wrong], settings),
        [LABELS[calibrated.truth[i]] for i in wrong],
        [LABELS[predicted[i]] for i in wrong],
        [float(probs[i].max()) for i in wrong],
        folder / "misclassified_val.png",
    )
    learning_curves(history, folder / "learning_curves.png")


def choose_served_model(
    fp32_path: Path,
    config: TrainConfig,
    settings: Settings,
    val_rows: pd.DataFrame,
    truth: np.ndarray,
    calibration_rows: pd.DataFrame,
) -> tuple[OnnxClassifier, np.ndarray, dict[str, float]]:
    """The model to serve with its val logits: the int8 version of ``fp32_path`` when ``config.quantize`` and its
    val top-1 is within ``config.quantize_tolerance`` of float32's, else float32; plus the comparison as metrics."""
    paths = list(val_rows["path"])
    fp32 = OnnxClassifier.from_path(fp32_path)
    fp32_logits = onnx_logits(fp32, paths, settings)
    if not config.quantize:
        return fp32, fp32_logits, {"quantized": 0.0}
    batches = preprocessed_batches(
        list(calibration_rows["path"]), fp32.metadata.preprocessing, max_pixels=settings.max_image_pixels, batch_size=16
    )
    int8 = OnnxClassifier.from_path(quantize_int8(fp32_path, fp32_path.parent.parent / "int8" / "model.onnx", batches))
    int8_logits = onnx_logits(int8, paths, settings)
    fp32_top1, int8_top1 = _top1(fp32_logits, truth), _top1(int8_logits, truth)
    accepted = int8_top1 >= fp32_top1 - config.quantize_tolerance
    metrics = {"val_top1_fp32": fp32_top1, "val_top1_int8": int8_top1, "quantized": float(accepted)}
    return (int8, int8_logits, metrics) if accepted else (fp32, fp32_logits, metrics)


def package(
    state: TrainState,
    config: TrainConfig,
    settings: Settings,
    val_rows: pd.DataFrame,
    calibration_rows: pd.DataFrame,
    folder: Path,
    extra: dict[str, Any],
) -> tuple[Path, ModelMetadata, Calibrated, dict[str, float]]:
    """Export (float32, then int8 if it keeps the accuracy), calibrate and stamp the served model into
    ``folder/onnx``; the float32 file stays in ``folder/onnx-fp32``. Returns (path, metadata, fit, metrics)."""
    model = best_model(state, config, settings)
    draft = metadata_for(model, settings.model_name).model_copy(update={"preprocessing": config.eval_spec()})
    fp32_path = export_onnx(model, folder / "onnx-fp32" / "model.onnx", draft)
    sample = preprocess_batch(_images(list(val_rows["path"].iloc[:8]), settings), draft.preprocessing)
    truth = np.array([by_label(label).index for label in val_rows["label"]])
    served, logits, metrics = choose_served_model(fp32_path, config, settings, val_rows, truth, calibration_rows)
    metrics["onnx_parity_max_abs"] = onnx_parity(model, fp32_path, sample)
    calibrated = calibrate(served, logits, truth)
    metadata = draft.model_copy(
        update={
            "temperature": calibrated.temperature,
            "ood_threshold": calibrated.ood.threshold,
            "extra": {
                **extra,
                "val_top1": round(calibrated.metrics()["val_top1"], 6),
                "int8": bool(metrics["quantized"]),
            },
        }
    )
    path = replace_metadata(served.source, folder / "onnx" / "model.onnx", metadata)
    (folder / "pytorch").mkdir(parents=True, exist_ok=True)
    torch.save(state.best_model, folder / "pytorch" / "state_dict.pt")
    return path, metadata, calibrated, metrics


def log_model(path: Path, metadata: ModelMetadata, run_id: str, settings: Settings) -> str:
    """Log the ONNX file as MLflow model ``model`` of ``run_id`` (signature + input example); returns its URI."""
    example = np.zeros((1, 3, metadata.preprocessing.crop_size, metadata.preprocessing.crop_size), np.float32)
    logits, embedding = OnnxClassifier.from_path(path).run(example)
    signature = infer_signature(example, {"logits": logits, "embedding": embedding})
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    info = mlflow.onnx.log_model(
        onnx.load(str(path)),
        name=MODEL_ARTIFACT,
        run_id=run_id,
        signature=signature,
        input_example=example,
        save_as_external_data=False,  # one self-contained .onnx file, as serving expects
        metadata={"pawfinder": json.loads(metadata.to_json())},
    )
    return info.model_uri


def finalize(
    state: TrainState,
    config: TrainConfig,
    settings: Settings,
    val_rows: pd.DataFrame,
    calibration_rows: pd.DataFrame,
    client: MlflowClient,
    run_id: str,
    folder: Path,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Package, log everything to ``run_id``, register (alias ``challenger``) and evaluate; returns a summary."""
    path, metadata, calibrated, export_metrics = package(
        state, config, settings, val_rows, calibration_rows, folder, extra
    )
    reports = folder / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    write_reports(calibrated, val_rows, state.history, settings, reports)
    (reports / "preprocessing.json").write_text(metadata.preprocessing.to_json(), encoding="utf-8")
    (reports / "labels.json").write_text(json.dumps(metadata.labels), encoding="utf-8")
    (reports / "model_metadata.json").write_text(metadata.to_json(), encoding="utf-8")
    (reports / "history.json").write_text(json.dumps(state.history, indent=1), encoding="utf-8")
    client.log_artifacts(run_id, str(reports), "reports")
    client.log_artifacts(run_id, str(folder / "pytorch"), "pytorch")
    client.log_artifacts(run_id, str(folder / "onnx-fp32"), "onnx-fp32")
    size_mb = path.stat().st_size / 2**20
    metrics = calibrated.metrics() | export_metrics | {"onnx_size_mb": size_mb}
    metrics |= {"best_epoch": float(state.best_epoch), "finetune_epochs_run": float(state.epoch)}
    log_metrics(client, run_id, metrics)
    model_uri = log_model(path, metadata, run_id, settings)
    summary: dict[str, Any] = {"run_id": run_id, "model_uri": model_uri, **metrics}
    ref = ModelRef(name=settings.model_name, run_id=run_id, uri=model_uri)
    if config.register_model:
        tags = {"run_id": run_id, "profile": config.profile, "backbone": config.backbone}
        tags |= {key: f"{value:.6g}" for key, value in calibrated.metrics().items()}
        version = register(model_uri, settings.model_name, tags, client=client)
        summary |= {"model_name": version.name, "model_version": version.version, "alias": "challenger"}
        ref = ModelRef(name=version.name, version=version.version, run_id=run_id, uri=model_uri)
    if config.evaluate_split:
        classifier = OnnxClassifier.from_path(path)
        report = evaluate(classifier, settings.dataset_dir, config.evaluate_split, settings=settings, model_ref=ref)
        log_evaluation(report, client)
        summary["evaluation"] = report.to_dict()
    return summary
