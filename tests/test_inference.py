"""Torch-free inference: softmax/OOD maths and OnnxClassifier end to end on a tiny exported model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

from pawfinder.breeds import LABELS, NUM_CLASSES
from pawfinder.inference import ModelFormatError, OnnxClassifier, ood_score, softmax
from pawfinder.models.backbones import PawNet
from pawfinder.models.onnx_export import export_onnx, metadata_for

RED, GREEN, GREY = (255, 0, 0), (0, 255, 0), (128, 128, 128)


def _tiny_pawnet() -> PawNet:
    """Embedding = mean normalised RGB; logit 0 tracks red, logit 1 green, logit 2 blue, the rest stay 0."""
    trunk = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = PawNet(trunk, backbone_name="efficientnet_lite0", embedding_dim=3, num_classes=NUM_CLASSES, dropout=0.0)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.weight[:3] = 10 * torch.eye(3)
    return model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = _tiny_pawnet()
    metadata = metadata_for(model, "pawfinder", temperature=2.0, ood_threshold=0.5, extra={"run_id": "test"})
    return export_onnx(model, tmp_path_factory.mktemp("tiny") / "model.onnx", metadata)


def _solid(colour: tuple[int, int, int], size: tuple[int, int] = (300, 260)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_softmax_is_stable_and_tempered() -> None:
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 1.0, 1.0]])
    probs = softmax(logits)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs[1], 1 / 3)
    hot = softmax(np.array([2.0, 0.0]), temperature=2.0)
    np.testing.assert_allclose(hot, softmax(np.array([1.0, 0.0])))
    with pytest.raises(ValueError, match="positive"):
        softmax(logits, temperature=0)


def test_ood_score_is_max_calibrated_probability() -> None:
    logits = np.array([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(ood_score(logits, 2.0), softmax(logits, 2.0).max(axis=1))
    assert ood_score(logits)[0] > ood_score(logits)[1] == pytest.approx(1 / 3)


def test_predict_end_to_end(tiny_model: Path) -> None:
    classifier = OnnxClassifier.from_path(tiny_model, intra_op_threads=1)
    assert classifier.metadata.labels == list(LABELS)
    assert classifier.metadata.extra == {"run_id": "test"}
    red, green, grey = classifier.predict([_solid(RED), _solid(GREEN, (90, 400)), _solid(GREY)], top_k=2)

    # red: normalised (1, -1, -1) -> logits 10, -10, -10, 0... at temperature 2
    expected = np.exp(5.0) / (np.exp(5.0) + 2 * np.exp(-5.0) + (NUM_CLASSES - 3))
    assert (red.label, red.breed, red.species) == ("Abyssinian", "Abyssinian", "cat")
    assert red.confidence == pytest.approx(expected, rel=1e-5)
    assert red.ood_score == red.confidence
    assert red.is_pet
    assert len(red.top_k) == 2
    assert red.top_k[0] == {
        "label": "Abyssinian",
        "breed": "Abyssinian",
        "species": "cat",
        "confidence": red.confidence,
    }
    np.testing.assert_allclose(red.embedding, [1.0, -1.0, -1.0], atol=1e-6)

    assert (green.label, green.breed, green.species) == ("american_bulldog", "American Bulldog", "dog")
    # grey: embedding ~0, all logits ~0 -> nearly uniform, below the 0.5 OOD threshold
    assert grey.confidence == pytest.approx(1 / NUM_CLASSES, rel=0.05)
    assert not grey.is_pet

    payload = red.to_dict()
    assert "embedding" not in payload
    assert red.to_dict(include_embedding=True)["embedding"] == pytest.approx([1.0, -1.0, -1.0], abs=1e-6)


def test_predict_edge_cases(tiny_model: Path) -> None:
    classifier = OnnxClassifier.from_path(tiny_model.parent)  # a directory holding one model, like an MLflow download
    assert classifier.predict([]) == []
    assert len(classifier.predict([_solid(RED)], top_k=100)[0].top_k) == NUM_CLASSES
    assert classifier.predict([Image.new("L", (50, 40), 200)])[0].label in LABELS
    with pytest.raises(ValueError, match="top_k"):
        classifier.predict([_solid(RED)], top_k=0)
    with pytest.raises(ValueError, match=r"shape \(N, 3, 224, 224\)"):
        classifier.run(np.zeros((1, 3, 32, 32), dtype=np.float32))


def test_rejects_files_that_are_not_pawfinder_models(tiny_model: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(tiny_model))
    del proto.metadata_props[:]
    bare = tmp_path / "bare" / "model.onnx"
    bare.parent.mkdir()
    onnx.save(proto, str(bare))
    with pytest.raises(ModelFormatError, match="no 'pawfinder' metadata"):
        OnnxClassifier.from_path(bare)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelFormatError, match="not a loadable ONNX model"):
        OnnxClassifier.from_path(garbage)
    (tmp_path / "two").mkdir()
    for name in ("a.onnx", "b.onnx"):
        (tmp_path / "two" / name).write_bytes(b"")
    with pytest.raises(ModelFormatError, match=r"exactly one \.onnx file"):
        OnnxClassifier.from_path(tmp_path / "two")
    with pytest.raises(FileNotFoundError):
        OnnxClassifier.from_path(tmp_path / "missing")
