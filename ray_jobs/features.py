"""Frozen backbone features for the stage-1 head, computed once per (backbone, preprocessing, images) and cached.

The cache file name is a hash of everything that determines the features, so a changed spec, backbone or image
set never reuses stale ones; files are written atomically and read back with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from pawfinder.data.torch_dataset import ManifestDataset
from pawfinder.files import atomic_file
from pawfinder.models.backbones import PawNet
from pawfinder.preprocessing.numpy_ops import GEOMETRY_VERSION
from pawfinder.preprocessing.spec import PreprocessSpec


def features_key(backbone: str, spec: PreprocessSpec, rows: pd.DataFrame, *, random_init_seed: int | None) -> str:
    """Hash of the backbone, its weights (ImageNet or a random init's seed), the spec and its code, the images."""
    identity = {
        "backbone": backbone,
        "weights": "imagenet" if random_init_seed is None else f"random-{random_init_seed}",
        "spec": spec.to_json(),
        "geometry": GEOMETRY_VERSION,
        "images": [[str(image), str(sha)] for image, sha in zip(rows["image"], rows["sha256"], strict=True)],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


@torch.no_grad()
def extract_features(
    model: PawNet, dataset: ManifestDataset, device: torch.device, *, batch_size: int = 64, loader_workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings ``(N, D)`` (float32, CPU) and targets ``(N,)`` of every image of ``dataset``, in order."""
    model.eval().to(memory_format=torch.channels_last)  # +16 % images/s on CPU (lite0, 224 px)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=loader_workers)
    parts, targets = [], []
    for images, labels in loader:
        batch = images.to(device).contiguous(memory_format=torch.channels_last)
        parts.append(model.features(batch).float().cpu())
        targets.append(labels)
    return torch.cat(parts), torch.cat(targets)


def cached_features(
    model: PawNet,
    dataset: ManifestDataset,
    cache_file: Path,
    device: torch.device,
    *,
    batch_size: int = 64,
    loader_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`extract_features`, read from ``cache_file`` when present, else computed and written there."""
    if cache_file.is_file():
        stored = torch.load(cache_file, map_location="cpu", weights_only=True)
        if len(stored["targets"]) == len(dataset):
            return stored["features"], stored["targets"]
    features, targets = extract_features(model, dataset, device, batch_size=batch_size, loader_workers=loader_workers)
    with atomic_file(cache_file) as handle:
        torch.save({"features": features, "targets": targets}, handle)
    return features, targets
