"""The training recipe as one validated config, and the named profiles ``smoke``, ``quick`` and ``full``.

The field defaults ARE the ``full`` profile (efficientnet_lite0, sized to finish within 60 min on 2 CPU cores);
``smoke`` and ``quick`` override a few of them; every field can be overridden again from the command line.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pawfinder.models.backbones import BACKBONES, check_frozen_stages, default_spec
from pawfinder.preprocessing.spec import Augment, PreprocessSpec

Profile = Literal["smoke", "quick", "full"]
PROFILE_NAMES: tuple[Profile, ...] = ("smoke", "quick", "full")


class TrainConfig(BaseModel):
    """Everything that determines a training run (logged to MLflow as parameters)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: Profile = "full"
    backbone: str = "efficientnet_lite0"
    pretrained: bool = Field(True, description="Start from ImageNet weights (False only for plumbing tests).")
    seed: int = 42
    image_size: int | None = Field(None, ge=32, description="Eval crop size; None = the backbone's default.")
    limit_per_class: int | None = Field(None, ge=1, description="Cap on train and val images per breed (smoke).")
    dropout: float = Field(0.2, ge=0, lt=1)

    # Stage 1: linear head on frozen features, computed once and cached.
    head_epochs: int = Field(60, ge=1)
    head_lr: float = Field(3e-3, gt=0)
    head_weight_decay: float = Field(1e-4, ge=0)
    head_batch_size: int = Field(256, ge=1)

    # Stage 2: fine-tune the network but its first stages.
    epochs: int = Field(12, ge=0, description="Fine-tuning epochs; 0 = head only.")
    frozen_stages: int = Field(
        2, ge=-1, description="The stem and this many stages after it stay frozen in fine-tuning; -1 = none."
    )
    lr: float = Field(2e-4, gt=0, description="Peak AdamW learning rate of the fine-tuning.")
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    batch_size: int = Field(32, ge=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    augment: Augment = "trivialaugment"
    random_erasing: float = Field(0.0, ge=0, le=1)
    crop_scale: float = Field(0.25, gt=0, le=1, description="Smallest image-area share of a random train crop.")
    train_sizes: tuple[int, ...] = Field(
        (192, 224), description="Progressive resizing: train crop per equal share of the epochs; () = eval crop."
    )
    ema_decay: float = Field(
        0.999, ge=0, lt=1, description="Per-step decay of the weight average evaluated and exported; 0 = last weights."
    )
    patience: int = Field(
        3, ge=1, description="Early stopping (last train size only): epochs without a lower calibrated val NLL."
    )
    freeze_batchnorm: bool = Field(
        True, description="Keep BatchNorm running statistics at their ImageNet values during fine-tuning."
    )

    # Export: the served ONNX file is int8 when that keeps the accuracy (about 3x less CPU per image).
    quantize: bool = Field(True, description="Serve an int8 model when its val top-1 is within the tolerance.")
    quantize_tolerance: float = Field(0.005, ge=0, le=1, description="Allowed val top-1 drop of int8 vs float32.")
    quantize_images_per_class: int = Field(4, ge=1, description="Train images per breed that calibrate int8 ranges.")

    # Runtime
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel).")
    use_gpu: bool = False
    cpus_per_worker: int = Field(2, ge=1, description="CPUs per worker; also torch's thread count on CPU.")
    loader_workers: int = Field(1, ge=0, description="DataLoader processes per training worker.")
    max_failures: int = Field(3, ge=0, description="Worker failures to recover from (resuming from a checkpoint).")
    experiment: str = "pawfinder-training"
    register_model: bool = Field(True, description="Register the model as a new version with alias 'challenger'.")
    evaluate_split: str | None = Field(None, description="Split evaluated and logged after training, e.g. test.")
    storage_path: str | None = Field(
        None, description="Ray storage (local dir or bucket URI); None = home/ray_results."
    )
    crash_at_epoch: int | None = Field(None, ge=1, description="Test only: a worker dies once at this epoch.")

    @model_validator(mode="after")
    def _known_backbone(self) -> TrainConfig:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; expected one of {', '.join(BACKBONES)}")
        check_frozen_stages(self.backbone, self.frozen_stages)
        return self

    def eval_spec(self) -> PreprocessSpec:
        """The eval preprocessing that travels with the model: the backbone's, scaled to ``image_size`` if set."""
        spec = default_spec(self.backbone)
        if self.image_size is None or self.image_size == spec.crop_size:
            return spec
        resize = round(self.image_size * spec.resize_size / spec.crop_size)
        return spec.model_copy(update={"crop_size": self.image_size, "resize_size": resize})

    def train_size(self, epoch: int) -> int:
        """Train crop size of fine-tuning ``epoch`` (0-based): ``train_sizes`` spread evenly over the epochs."""
        if not self.train_sizes:
            return self.eval_spec().crop_size
        phase = min(epoch * len(self.train_sizes) // max(self.epochs, 1), len(self.train_sizes) - 1)
        return self.train_sizes[phase]

    def may_stop_early(self, epoch: int) -> bool:
        """Early stopping applies from the last train size on: lower-resolution phases score lower by design."""
        return self.train_size(epoch) == self.train_size(self.epochs - 1)

    def params(self) -> dict[str, str]:
        """Flat string parameters for MLflow."""
        return {key: json.dumps(value) for key, value in self.model_dump(mode="json").items()}


PROFILES: dict[Profile, dict[str, Any]] = {
    "smoke": {
        "image_size": 64,
        "limit_per_class": 4,
        "head_epochs": 5,
        "head_batch_size": 64,
        "epochs": 2,
        "lr": 1e-3,
        "warmup_epochs": 0.0,
        "batch_size": 16,
        "train_sizes": (),
        "patience": 2,
        "cpus_per_worker": 1,
        "loader_workers": 0,
    },
    "quick": {
        "epochs": 2,
        "warmup_epochs": 0.3,
        "train_sizes": (192,),
        "ema_decay": 0.99,
    },
    "full": {},
}


def load_config(profile: Profile, **overrides: Any) -> TrainConfig:
    """The ``profile``'s config with ``overrides`` applied (``None`` values are ignored)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILE_NAMES)}")
    given = {key: value for key, value in overrides.items() if value is not None}
    return TrainConfig(**{**PROFILES[profile], **given, "profile": profile})
