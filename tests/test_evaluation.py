"""Evaluation through the serving path on a tiny generated dataset: metrics, bad images, the --json contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import make_tiny_dataset
from PIL import Image
from sklearn.metrics import f1_score
from typer.testing import CliRunner

from pawfinder.cli import app
from pawfinder.data.annotations import read_annotations
from pawfinder.evaluation import (
    REPORT_KEYS,
    ModelLoadError,
    _metrics,
    evaluate,
    load_model,
    smoke_check,
)
from pawfinder.inference import OnnxClassifier
from pawfinder.settings import Settings

BREEDS = ("Abyssinian", "Bengal", "beagle", "pug", "Persian", "boxer")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_tiny_dataset(tmp_path_factory.mktemp("pets"), breeds=BREEDS, per_breed=2, test_per_breed=3)
    variants = (root / "variants.csv").read_text().replace("pug_5.jpg,original", "pug_5.jpg,squashed_square")
    (root / "variants.csv").write_text(variants)
    return root


@pytest.fixture
def model(tiny_onnx_model: Path) -> OnnxClassifier:
    return OnnxClassifier.from_path(tiny_onnx_model)


def test_evaluate_matches_serving_predictions(model: OnnxClassifier, dataset: Path) -> None:
    report = evaluate(model, dataset, "test", settings=Settings())
    test = read_annotations(dataset / "annotations" / "test.txt")
    images = [Image.open(dataset / "images" / f"{a.image}.jpg").convert("RGB") for a in test]
    predicted = [p.label for p in model.predict(images, top_k=5)]
    assert report.n == len(test) == 18
    assert report.top1 == pytest.approx(np.mean([p == a.label for p, a in zip(predicted, test, strict=True)]))
    assert set(report.per_breed) == set(BREEDS)
    assert report.per_variant["squashed_square"]["n"] == 1
    assert report.per_variant["original"]["n"] == 17
    assert 0 <= report.ece <= 1 and report.top1 <= report.top5 <= 1
    assert report.model.to_dict() == {"name": "pawfinder", "version": None}
    assert list(report.to_dict()) == list(REPORT_KEYS)


def test_bad_and_missing_images_are_skipped_and_listed(model: OnnxClassifier, dataset: Path, tmp_path: Path) -> None:
    broken = make_tiny_dataset(tmp_path / "pets", breeds=BREEDS[:2], per_breed=1, test_per_breed=3)
    (broken / "images" / "Abyssinian_2.jpg").write_bytes(b"not a jpeg at all")
    (broken / "images" / "Abyssinian_3.jpg").write_bytes((broken / "images" / "Bengal_2.jpg").read_bytes()[:300])
    (broken / "images" / "Bengal_3.jpg").unlink()
    (broken / "variants.csv").unlink()
    report = evaluate(model, broken, "test", settings=Settings())
    assert report.n == 3
    assert {(s.image, s.reason) for s in report.skipped} == {
        ("Abyssinian_2", "not_an_image"),
        ("Abyssinian_3", "truncated"),
        ("Bengal_3", "missing"),
    }
    assert report.per_variant == {}


def test_train_and_val_splits_come_from_trainval(model: OnnxClassifier, dataset: Path) -> None:
    settings = Settings(val_fraction=0.5)
    train = evaluate(model, dataset, "train", settings=settings)
    val = evaluate(model, dataset, "val", settings=settings)
    assert train.n + val.n == len(BREEDS) * 2
    with pytest.raises(FileNotFoundError, match="official layout"):
        evaluate(model, dataset, "nosuchsplit", settings=settings)
    with pytest.raises(ValueError, match="invalid split"):
        evaluate(model, dataset, "../test", settings=settings)


def test_metrics_by_hand_and_against_sklearn() -> None:
    rng = np.random.default_rng(1)
    labels = [f"class{i}" for i in range(7)]
    truth = rng.integers(0, 6, size=200)  # class 6 never true, but predicted sometimes
    probs = rng.dirichlet(np.ones(7), size=200)
    probs[np.arange(100), truth[:100]] += 1.0  # half of them right
    probs /= probs.sum(axis=1, keepdims=True)
    metrics = _metrics(probs, truth, labels)
    predicted = probs.argmax(axis=1)
    assert metrics["top1"] == pytest.approx(np.mean(predicted == truth))
    top5 = np.argsort(-probs, axis=1)[:, :5]
    assert metrics["top5"] == pytest.approx(np.mean([t in row for t, row in zip(truth, top5, strict=True)]))
    assert metrics["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert metrics["per_breed"]["class0"] == pytest.approx(np.mean(predicted[truth == 0] == 0))
    assert "class6" not in metrics["per_breed"]


def test_smoke_check_and_load_model_errors(tiny_onnx_model: Path, tmp_path: Path) -> None:
    model, ref = load_model(str(tiny_onnx_model.parent))
    smoke_check(model)
    assert ref.version is None and ref.name == "pawfinder"
    with pytest.raises(ModelLoadError, match="neither an existing"):
        load_model(str(tmp_path / "missing.onnx"))


def test_cli_evaluate_json_contract(tiny_onnx_model: Path, dataset: Path) -> None:
    result = CliRunner().invoke(
        app, ["evaluate", "--model-uri", str(tiny_onnx_model), "--data-dir", str(dataset), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert list(report) == ["top1", "top5", "n", "ece", "macro_f1", "per_breed", "per_variant", "model"]
    assert report["n"] == 18
    assert set(report["per_variant"]) == {"original", "squashed_square"}
    assert set(report["per_variant"]["original"]) == {"top1", "n"}
    assert report["model"] == {"name": "pawfinder", "version": None}


def test_cli_evaluate_reports_a_bad_folder_clearly(tiny_onnx_model: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", "--model-uri", str(tiny_onnx_model), "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "official layout" in result.stderr
