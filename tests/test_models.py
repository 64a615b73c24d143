"""Backbones, PawNet and ONNX export: strict pretrained loads, clear weight errors, torch-vs-onnxruntime parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import FIXTURES, free_port
from PIL import Image

from pawfinder.breeds import NUM_CLASSES, by_label, label_from_image_name
from pawfinder.inference import OnnxClassifier
from pawfinder.modelmeta import METADATA_KEY, ModelMetadata
from pawfinder.models.backbones import (
    PawNet,
    WeightsMismatchError,
    WeightsUnavailableError,
    build_model,
    get_backbone,
    imagenet_model,
    load_state_by_position,
)
from pawfinder.models.onnx_export import export_onnx, metadata_for, onnx_parity
from pawfinder.models.quantize import quantize_int8
from pawfinder.preprocessing.numpy_ops import preprocess_batch

PHOTOS = sorted((FIXTURES / "photos").glob("*.jpg"))
IMAGENET_DOGS = range(151, 269)
IMAGENET_CATS = range(281, 286)


def _photos(n: int) -> list[Image.Image]:
    images = []
    for path in PHOTOS[:n]:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[PawNet, Path]]:
    """Pretrained lite0 and random-init mobilenet_v2 (its weights are unreachable offline), exported once."""
    out = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    models = {
        "efficientnet_lite0": build_model("efficientnet_lite0", pretrained=True),
        "mobilenet_v2": build_model("mobilenet_v2", pretrained=False),
    }
    return {
        name: (model, export_onnx(model, out / name / "model.onnx", metadata_for(model, "pawfinder")))
        for name, model in models.items()
    }


def test_pretrained_lite0_imagenet_head_sees_cats_and_dogs() -> None:
    """Position-wise loading is right: the untouched ImageNet head names a cat or dog class of the right species."""
    model = imagenet_model("efficientnet_lite0")
    images = _photos(len(PHOTOS))
    spec = build_model("efficientnet_lite0", pretrained=False).default_spec()
    with torch.no_grad():
        top1 = model(torch.from_numpy(preprocess_batch(images, spec))).argmax(dim=1).tolist()
    expected = [by_label(label_from_image_name(p.name)).species for p in PHOTOS]
    seen = ["dog" if c in IMAGENET_DOGS else "cat" if c in IMAGENET_CATS else f"other:{c}" for c in top1]
    assert seen == expected


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_weights_load_strictly_by_position(backbone: str) -> None:
    model = build_model(backbone, pretrained=True)
    fresh = build_model(backbone, pretrained=False)
    stem = "trunk.conv_stem.weight"
    assert not torch.equal(model.state_dict()[stem], fresh.state_dict()[stem])
    assert model.head.out_features == NUM_CLASSES


def test_load_by_position_rejects_mismatches() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    good = {f"x{i}": t.clone() for i, t in enumerate(model.state_dict().values())}
    load_state_by_position(model, good, "good.pth")
    swapped = dict(good, x0=torch.zeros(4, 3))
    with pytest.raises(WeightsMismatchError, match=r"bad\.pth .*1 shape mismatches.*x0 \(4, 3\) -> 0\.weight \(3, 4\)"):
        load_state_by_position(model, swapped, "bad.pth")
    with pytest.raises(WeightsMismatchError, match="holds 3 tensors but the model expects 4"):
        load_state_by_position(model, dict(list(good.items())[:3]), "short.pth")


def test_mobilenet_v2_without_cache_or_network_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused at once, no network wait
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, unreachable)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(WeightsUnavailableError, match="PAWFINDER_MOBILENET_V2_WEIGHTS") as info:
        build_model("mobilenet_v2", pretrained=True)
    assert "mobilenet_v2-7ebf99e0.pth" in str(info.value)
    assert "efficientnet_lite0" in str(info.value)


def test_mobilenet_v2_from_local_weights_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = get_backbone("mobilenet_v2").create()
    weights = tmp_path / "mobilenet_v2.pth"
    torch.save(source.state_dict(), weights)
    model = build_model("mobilenet_v2", weights_path=weights)
    assert torch.equal(model.trunk.features[0][0].weight, source.features[0][0].weight)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        build_model("mobilenet_v2", weights_path=tmp_path / "missing.pth")
    torch.save({"not": "a state dict of mobilenet"}, weights)
    with pytest.raises(WeightsMismatchError):
        build_model("mobilenet_v2", weights_path=weights)


def test_unknown_backbone_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"expected one of efficientnet_lite0, .*mobilenet_v2"):
        build_model("resnet50")


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "mobilenet_v2"])
def test_frozen_stages_get_no_gradients_and_keep_their_statistics(backbone: str) -> None:
    torch.manual_seed(0)
    model = build_model(backbone, pretrained=False)
    entry = get_backbone(backbone)
    stages = entry.stages(model.trunk)
    assert len(stages) == entry.num_stages + 1
    stage_params = {id(p) for stage in stages for p in stage.parameters()}
    assert len(stage_params) < len(list(model.trunk.parameters()))  # the trunk's last conv is no stage: never frozen
    model.freeze_stages(3)
    frozen = {id(p) for stage in stages[:4] for p in stage.parameters()}
    assert all(p.requires_grad == (id(p) not in frozen) for p in model.parameters())
    model.train()

    def norms(modules: list[torch.nn.Module]) -> list[torch.nn.BatchNorm2d]:
        return [m for module in modules for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    assert not any(m.training for m in norms(stages[:4]))
    assert all(m.training for m in norms(stages[4:])) and model.head.training
    before = [m.running_mean.clone() for m in norms(stages[:4])]
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms(stages[:4]), strict=True))
    assert all(p.grad is None for stage in stages[:4] for p in stage.parameters())
    assert all(p.grad is not None for p in stages[4].parameters())
    with pytest.raises(ValueError, match="frozen stages must be -1 to"):
        model.freeze_stages(entry.num_stages + 1)
    unfrozen = build_model(backbone, pretrained=False)
    unfrozen.freeze_stages(-1)
    assert all(p.requires_grad for p in unfrozen.parameters())


def test_head_trains_on_cached_features() -> None:
    """features() is the penultimate embedding; head(features) is exactly the eval-mode forward."""
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", pretrained=False).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        embedding = model.features(x)
        logits, embedding_again = model.forward_with_embedding(x)
        assert embedding.shape == (2, model.embedding_dim) == (2, 1280)
        torch.testing.assert_close(model.head(embedding), logits)
        torch.testing.assert_close(embedding, embedding_again)
        torch.testing.assert_close(model(x), logits)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "mobilenet_v2"])
def test_onnx_parity(exported: dict[str, tuple[PawNet, Path]], backbone: str) -> None:
    model, path = exported[backbone]
    batch = preprocess_batch(_photos(2), model.default_spec())
    assert onnx_parity(model, path, batch) < 1e-4
    with torch.no_grad():
        expected = model.eval().features(torch.from_numpy(batch)).numpy()
    _, embedding = OnnxClassifier.from_path(path).run(batch)
    np.testing.assert_allclose(embedding, expected, rtol=1e-4, atol=1e-4)


def test_onnx_file_is_single_self_contained_with_dynamic_batch(exported: dict[str, tuple[PawNet, Path]]) -> None:
    model, path = exported["efficientnet_lite0"]
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]
    proto = onnx.load(str(path), load_external_data=False)
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    metadata = ModelMetadata.from_json({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    assert metadata == metadata_for(model, "pawfinder")
    batch_dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert batch_dims == ["batch", 3, 224, 224]
    classifier = OnnxClassifier.from_path(path)
    for n in (1, 3):
        logits, embedding = classifier.run(np.zeros((n, 3, 224, 224), dtype=np.float32))
        assert logits.shape == (n, NUM_CLASSES)
        assert embedding.shape == (n, 1280)


def test_export_restores_training_mode_and_rejects_inconsistent_metadata(tmp_path: Path) -> None:
    model = build_model("mobilenet_v2", pretrained=False).train()
    metadata = metadata_for(model, "pawfinder")
    with pytest.raises(ValueError, match="opset 16 < 17"):
        export_onnx(model, tmp_path / "m.onnx", metadata.model_copy(update={"onnx_opset": 16}), opset=16)
    with pytest.raises(ValueError, match="embedding_dim"):
        export_onnx(model, tmp_path / "m.onnx", metadata.model_copy(update={"embedding_dim": 7}))
    assert not (tmp_path / "m.onnx").exists()
    export_onnx(model, tmp_path / "m.onnx", metadata)
    assert model.training
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_int8_model_keeps_metadata_and_predictions(exported: dict[str, tuple[PawNet, Path]], tmp_path: Path) -> None:
    model, path = exported["efficientnet_lite0"]
    photos = preprocess_batch(_photos(7), model.default_spec())
    quantized = quantize_int8(path, tmp_path / "int8" / "model.onnx", [photos[:4], photos[4:]])

    assert OnnxClassifier.from_path(quantized).metadata == OnnxClassifier.from_path(path).metadata
    assert quantized.stat().st_size < 0.4 * path.stat().st_size
    _, fp32 = OnnxClassifier.from_path(path).run(photos)
    _, int8 = OnnxClassifier.from_path(quantized).run(photos)
    cosine = (fp32 * int8).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(int8, axis=1)
    assert cosine.min() > 0.85 and cosine.mean() > 0.9  # measured 0.89-0.94 (7 calibration images)
    with pytest.raises(ValueError, match="no 'pawfinder' metadata"):
        plain = tmp_path / "plain.onnx"
        proto = onnx.load(str(path))
        del proto.metadata_props[:]
        onnx.save(proto, str(plain))
        quantize_int8(plain, tmp_path / "never.onnx", [photos])
