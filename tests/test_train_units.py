"""Building blocks of the training job, without Ray or MLflow: config, schedule, checkpoints, features, OOD, reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import synthetic_image
from PIL import Image
from pydantic import ValidationError

from pawfinder.breeds import LABELS, by_label
from pawfinder.data.torch_dataset import ManifestDataset, split_frame
from pawfinder.models.backbones import build_model
from pawfinder.preprocessing.torch_ops import eval_transform
from ray_jobs.averaging import WeightAverage
from ray_jobs.checkpoints import TrainState, load_state, save_state
from ray_jobs.config import PROFILES, TrainConfig, load_config
from ray_jobs.features import cached_features, features_key
from ray_jobs.loops import train_epoch, warmup_cosine, warmup_cosine_factor
from ray_jobs.ood import fit_ood_threshold, synthetic_non_pets
from ray_jobs.reports import (
    confusion_matrix,
    learning_curves,
    misclassified_grid,
    per_breed_accuracy,
    write_confusion_matrix,
)


def _manifest(tmp_path: Path, labels: tuple[str, ...] = ("Abyssinian", "pug"), per_split: int = 3) -> pd.DataFrame:
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in labels:
        for split in ("train", "val"):
            for n in range(per_split):
                image = f"{label}_{split}{n}"
                path = tmp_path / f"{image}.jpg"
                synthetic_image(label, n, (40, 30)).save(path)
                rows.append(
                    {"image": image, "path": str(path), "label": label, "class_id": by_label(label).class_id}
                    | {"split": split, "sha256": f"sha-{image}"}
                )
    return pd.DataFrame(rows)


def test_profiles_and_overrides() -> None:
    assert load_config("full") == TrainConfig()
    smoke = load_config("smoke", epochs=5, lr=None)
    assert (smoke.profile, smoke.epochs, smoke.lr, smoke.image_size) == ("smoke", 5, PROFILES["smoke"]["lr"], 64)
    assert load_config("quick").epochs == PROFILES["quick"]["epochs"]
    with pytest.raises(ValueError, match="unknown profile"):
        load_config("huge")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="unknown backbone"):
        load_config("full", backbone="resnet9000")
    with pytest.raises(ValidationError):
        load_config("full", epochs=-1)
    with pytest.raises(ValidationError, match="frozen stages must be -1 to 7"):
        load_config("full", frozen_stages=8)


def test_progressive_resizing_and_eval_spec() -> None:
    config = TrainConfig(epochs=12, train_sizes=(128, 160, 192))
    assert [config.train_size(e) for e in range(12)] == [128] * 4 + [160] * 4 + [192] * 4
    assert TrainConfig(train_sizes=()).train_size(0) == 224
    assert [config.may_stop_early(e) for e in (0, 7, 8, 11)] == [False, False, True, True]
    assert TrainConfig(train_sizes=()).may_stop_early(0)
    spec = TrainConfig(image_size=64).eval_spec()
    assert (spec.crop_size, spec.resize_size) == (64, 73)
    assert TrainConfig().eval_spec().crop_size == 224


def test_warmup_then_cosine() -> None:
    assert warmup_cosine_factor(0, total_steps=100, warmup_steps=10) == pytest.approx(0.1)
    assert warmup_cosine_factor(9, total_steps=100, warmup_steps=10) == pytest.approx(1.0)
    assert warmup_cosine_factor(55, total_steps=100, warmup_steps=10) == pytest.approx(0.505)
    assert warmup_cosine_factor(100, total_steps=100, warmup_steps=10) == pytest.approx(0.01)
    assert warmup_cosine_factor(0, total_steps=10, warmup_steps=0) == pytest.approx(1.0)


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = warmup_cosine(optimizer, total_steps=10, warmup_steps=2)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    state = TrainState(
        stage="finetune",
        epoch=2,
        model=model.state_dict(),
        best_model=model.state_dict(),
        best_accuracy=0.5,
        best_epoch=1,
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        average=model.state_dict(),
        history=[{"stage": "head", "epoch": 1, "val_accuracy": 0.4}],
        mlflow_runs={"head": "abc"},
    )
    restored = load_state(save_state(state, tmp_path / "ckpt").parent)
    assert restored.epoch == 2 and restored.history == state.history and restored.mlflow_runs == {"head": "abc"}
    torch.testing.assert_close(restored.model["weight"], model.weight.detach())
    torch.testing.assert_close(restored.average["weight"], model.weight.detach())
    fresh = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=0.1)
    fresh_scheduler = warmup_cosine(fresh, total_steps=10, warmup_steps=2)
    fresh.load_state_dict(restored.optimizer)
    fresh_scheduler.load_state_dict(restored.scheduler)
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    with pytest.raises(FileNotFoundError, match="not a PawFinder training checkpoint"):
        load_state(tmp_path / "empty")


def test_split_frame_and_dataset(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    train = split_frame(manifest, "train", limit_per_class=2)
    assert list(train["label"]) == ["Abyssinian", "Abyssinian", "pug", "pug"]
    dataset = ManifestDataset.from_frame(train, lambda image: torch.tensor(image.size), max_pixels=10_000)
    assert len(dataset) == 4
    assert dataset[2][1] == by_label("pug").index
    assert dataset[0][0].tolist() == [40, 30]
    with pytest.raises(ValueError, match="no 'test' images"):
        split_frame(manifest, "test")


def test_features_are_cached_by_content(tmp_path: Path) -> None:
    rows = split_frame(_manifest(tmp_path / "img"), "train")
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", pretrained=False)
    spec = TrainConfig(image_size=32).eval_spec()
    dataset = ManifestDataset.from_frame(rows, eval_transform(spec), max_pixels=10_000)
    cache = tmp_path / "cache" / f"{features_key('efficientnet_lite0', spec, rows, random_init_seed=0)}.pt"
    features, targets = cached_features(model, dataset, cache, torch.device("cpu"))
    assert features.shape == (6, model.embedding_dim) and targets.tolist() == [0, 0, 0, 25, 25, 25]
    assert cache.is_file()
    again, _ = cached_features(torch.nn.Identity(), dataset, cache, torch.device("cpu"))  # type: ignore[arg-type]
    torch.testing.assert_close(again, features)
    other_spec = TrainConfig(image_size=48).eval_spec()
    assert features_key("efficientnet_lite0", other_spec, rows, random_init_seed=0) != cache.stem
    assert features_key("efficientnet_lite0", spec, rows.iloc[:3], random_init_seed=0) != cache.stem


def test_synthetic_non_pets_are_deterministic() -> None:
    first, second = synthetic_non_pets(per_kind=2), synthetic_non_pets(per_kind=2)
    assert len(first) == 10
    assert all(a.mode == "RGB" and a.tobytes() == b.tobytes() for a, b in zip(first, second, strict=True))


def test_ood_threshold_balances_pets_and_non_pets() -> None:
    pets = np.linspace(0.5, 1.0, 100)
    separable = fit_ood_threshold(pets, np.full(20, 0.1))
    assert separable.threshold == pytest.approx(0.5)
    assert (separable.pet_accept_rate, separable.non_pet_reject_rate) == (1.0, 1.0)
    overlapping = fit_ood_threshold(pets, np.full(20, 0.9), min_accept=0.95)
    assert overlapping.pet_accept_rate >= 0.95
    assert overlapping.non_pet_reject_rate == 0.0
    assert overlapping.threshold == pytest.approx(0.5)  # no threshold allowed by min_accept rejects any: stay low
    partial = fit_ood_threshold(pets, np.array([0.2, 0.52, 0.9]), min_accept=0.9)
    assert partial.non_pet_reject_rate == pytest.approx(2 / 3)
    assert partial.pet_accept_rate >= 0.9


def test_reports_write_tables_and_images(tmp_path: Path) -> None:
    truth = np.array([0, 0, 25, 25])
    predicted = np.array([0, 25, 25, 25])
    matrix = confusion_matrix(truth, predicted, 37)
    assert matrix[0, 0] == 1 and matrix[0, 25] == 1 and matrix[25, 25] == 2 and matrix.sum() == 4
    paths = write_confusion_matrix(matrix, LABELS, tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)
    table = per_breed_accuracy(truth, predicted, LABELS)
    assert table.set_index("label")["accuracy"].to_dict() == {"Abyssinian": 0.5, "pug": 1.0}
    image = Image.new("RGB", (30, 20), "red")
    assert misclassified_grid([image], ["Abyssinian"], ["pug"], [0.7], tmp_path / "grid.png").is_file()
    assert misclassified_grid([], [], [], [], tmp_path / "none.png").is_file()
    history = [
        {"stage": "head", "epoch": 1, "train_loss": 1.0, "val_loss": 0.9, "train_accuracy": 0.5}
        | {"val_accuracy": 0.6, "lr": 0.01},
        {"stage": "finetune", "epoch": 1, "train_loss": 0.5, "val_loss": 0.6, "train_accuracy": 0.8}
        | {"val_accuracy": 0.7, "lr": 0.001},
    ]
    assert learning_curves(history, tmp_path / "curves.png").stat().st_size > 0


def test_frozen_batchnorm_keeps_statistics_but_trains_weights() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2)
    )
    model(torch.zeros(2, 3, 8, 8))
    batchnorm = model[1]
    before_mean, before_weight = batchnorm.running_mean.clone(), batchnorm.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = warmup_cosine(optimizer, total_steps=1, warmup_steps=0)
    batches = [(torch.randn(4, 3, 8, 8) + 5, torch.tensor([0, 1, 0, 1]))]
    stats = train_epoch(
        model, batches, optimizer, scheduler, torch.nn.CrossEntropyLoss(), torch.device("cpu"), frozen_batchnorm=True
    )
    assert stats.images == 4
    assert model.training and not batchnorm.training
    torch.testing.assert_close(batchnorm.running_mean, before_mean)
    assert not torch.equal(batchnorm.weight.detach(), before_weight)
    train_epoch(model, batches, optimizer, scheduler, torch.nn.CrossEntropyLoss(), torch.device("cpu"))
    assert not torch.equal(batchnorm.running_mean, before_mean)  # not frozen: statistics follow the batches


def test_weight_average_follows_the_weights_and_copies_buffers() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.75)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(4.0)
        model[1].running_mean.fill_(3.0)
    average.update(model)
    torch.testing.assert_close(average.model[0].weight, start + 1.0)  # a quarter of the way
    torch.testing.assert_close(average.model[1].running_mean, torch.full((2,), 3.0))
    assert not average.model.training and not any(p.requires_grad for p in average.model.parameters())
    restored = WeightAverage(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)), decay=0.75)
    restored.load_state_dict(average.state_dict())
    torch.testing.assert_close(restored.model[0].weight, average.model[0].weight)
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)
