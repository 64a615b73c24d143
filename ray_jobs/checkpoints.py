"""The training state saved every epoch (Ray checkpoint directory) and restored after a failure.

One file of tensors and plain values only, so it is read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

STATE_FILE = "train_state.pt"
Stage = Literal["head", "finetune"]


@dataclass
class TrainState:
    """Where training stands: ``stage`` finished last, fine-tuning ``epoch``s done, the best model so far (lowest
    calibrated val NLL over both stages, with its val top-1 and epoch), the lowest calibrated val NLL at the last train
    size with the epochs since (early stopping) and the weight average."""

    stage: Stage
    epoch: int
    model: dict[str, torch.Tensor]
    best_model: dict[str, torch.Tensor]
    best_accuracy: float
    best_epoch: int
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    average: dict[str, torch.Tensor] | None = None
    best_nll: float = math.inf
    best_finetune_nll: float = math.inf
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    mlflow_runs: dict[str, str] = field(default_factory=dict)


def detached(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CPU copy of a state dict that later optimiser steps do not change."""
    return {key: value.detach().to("cpu", copy=True) for key, value in state_dict.items()}


def save_state(state: TrainState, directory: Path) -> Path:
    """Write ``state`` into ``directory`` (created); returns the file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    torch.save(asdict(state), path)
    return path


def load_state(directory: Path) -> TrainState:
    """Read the state written by :func:`save_state` (tensors and plain values only)."""
    path = directory / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a PawFinder training checkpoint")
    return TrainState(**torch.load(path, map_location="cpu", weights_only=True))
