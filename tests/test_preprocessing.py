"""Preprocessing: the torch-free numpy/Pillow eval path matches the torch eval transform; spec and train transform."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from conftest import FIXTURES
from PIL import Image
from pydantic import ValidationError
from torchvision.transforms import InterpolationMode, v2

from pawfinder.models.backbones import BACKBONES, default_spec
from pawfinder.preprocessing.numpy_ops import preprocess, preprocess_batch, resize_and_crop, resized_size
from pawfinder.preprocessing.spec import PreprocessSpec
from pawfinder.preprocessing.torch_ops import eval_transform, train_transform

PHOTOS = sorted((FIXTURES / "photos").glob("*.jpg"))


def _generated(size: tuple[int, int], mode: str, seed: int) -> Image.Image:
    """Smooth gradients plus noise, so resampling differences would show."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


GENERATED = {
    "landscape": _generated((333, 250), "RGB", 0),
    "portrait": _generated((201, 517), "RGB", 1),
    "square_exact": _generated((224, 224), "RGB", 2),
    "greyscale": _generated((300, 301), "L", 3),
    "rgba": _generated((640, 480), "RGBA", 4),
}


def _images() -> list[tuple[str, Image.Image]]:
    photos = []
    for path in PHOTOS:
        with Image.open(path) as image:
            photos.append((path.name, image.convert("RGB")))
    return photos + list(GENERATED.items())


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_lite2", "mobilenet_v2"])
def test_numpy_eval_path_matches_torch_eval_transform(backbone: str) -> None:
    spec = default_spec(backbone)
    transform = eval_transform(spec)
    worst = 0.0
    for name, image in _images():
        expected = transform(image).numpy()
        actual = preprocess(image, spec)
        assert actual.shape == expected.shape == (3, spec.crop_size, spec.crop_size), name
        assert actual.dtype == np.float32
        worst = max(worst, float(np.abs(actual - expected).max()))
    assert worst < 1e-5  # contract: < 1e-3; both sides resize with the same Pillow kernel


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "mobilenet_v2"])
def test_resize_and_crop_is_torchvision_resize_then_center_crop(backbone: str) -> None:
    """One resample of the cropped region is torchvision's Resize + CenterCrop up to rounding: a few pixels off by
    one or two grey levels (Pillow rounds its intermediate pass to uint8 at other positions)."""
    spec = default_spec(backbone)
    reference = v2.Compose(
        [
            v2.Resize(spec.resize_size, interpolation=InterpolationMode(spec.interpolation), antialias=True),
            v2.CenterCrop(spec.crop_size),
        ]
    )
    for name, image in _images():
        expected = np.asarray(reference(image.convert("RGB")), dtype=np.int16)
        actual = np.asarray(resize_and_crop(image, spec), dtype=np.int16)
        assert actual.shape == expected.shape, name
        difference = np.abs(actual - expected)
        assert difference.max() <= 2, name
        assert difference.mean() < 0.05, name


def test_parity_covers_real_photos() -> None:
    assert len(PHOTOS) >= 3, "tests/fixtures/photos should hold a few real photos"


def test_preprocess_batch_stacks_and_handles_empty() -> None:
    spec = default_spec("efficientnet_lite0")
    images = list(GENERATED.values())[:3]
    batch = preprocess_batch(images, spec)
    assert batch.shape == (3, 3, 224, 224)
    np.testing.assert_array_equal(batch[1], preprocess(images[1], spec))
    assert preprocess_batch([], spec).shape == (0, 3, 224, 224)


def test_resized_size_rounds_long_side_down_like_torchvision() -> None:
    assert resized_size(500, 375, 256) == (341, 256)
    assert resized_size(375, 500, 256) == (256, 341)
    assert resized_size(256, 256, 256) == (256, 256)


def test_spec_json_round_trip_and_validation() -> None:
    spec = default_spec("efficientnet_lite1")
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValidationError, match="larger than resize_size"):
        PreprocessSpec(resize_size=200, crop_size=224, mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ValidationError):
        PreprocessSpec(resize_size=256, crop_size=224, mean=(0, 0, 0), std=(1, 0, 1))
    with pytest.raises(ValidationError):
        PreprocessSpec.from_json('{"resize_size": 256, "crop_size": 224, "mean": [0, 0, 0], "std": [1, 1, 1], "x": 1}')


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_specs_follow_timm_pretrained_config(backbone: str) -> None:
    cfg = timm.get_pretrained_cfg(backbone.replace("efficientnet", "tf_efficientnet")).to_dict()
    spec = default_spec(backbone)
    assert spec.crop_size == cfg["input_size"][-1]
    assert spec.resize_size == int(cfg["input_size"][-1] / cfg["crop_pct"])
    assert (spec.mean, spec.std, spec.interpolation) == (cfg["mean"], cfg["std"], cfg["interpolation"])


def test_every_backbone_has_a_default_spec() -> None:
    assert {name: default_spec(name).crop_size for name in BACKBONES} == {
        "efficientnet_lite0": 224,
        "efficientnet_lite1": 240,
        "efficientnet_lite2": 260,
        "mobilenet_v2": 224,
    }


@pytest.mark.parametrize("augment", ["trivialaugment", "randaugment", "none"])
def test_train_transform_outputs_normalised_crops(augment: str) -> None:
    torch.manual_seed(0)
    transform = train_transform(default_spec("efficientnet_lite0"), crop_size=160, augment=augment, random_erasing=0.5)
    out = transform(GENERATED["rgba"])
    assert out.shape == (3, 160, 160)
    assert out.dtype == torch.float32
    assert float(out.min()) >= -1.0 - 1e-6 and float(out.max()) <= 1.0 + 1e-6


def test_train_transform_rejects_bad_options() -> None:
    spec = default_spec("efficientnet_lite0")
    with pytest.raises(ValueError, match="unknown augment"):
        train_transform(spec, augment="autoaugment")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probability"):
        train_transform(spec, random_erasing=1.5)
    with pytest.raises(ValueError, match="area share"):
        train_transform(spec, crop_scale=0.0)


def test_torch_free_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import pawfinder.preprocessing.numpy_ops, pawfinder.preprocessing.spec, pawfinder.modelmeta\n"
        "import pawfinder.inference\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'timm', 'onnx') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
