"""The function every Ray Train worker runs: resume from the last checkpoint if any, then stage 1 and stage 2."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from pawfinder.data.prepare import load_manifest
from pawfinder.data.torch_dataset import split_frame
from pawfinder.models.backbones import build_model
from pawfinder.settings import Settings
from ray_jobs.checkpoints import TrainState, load_state, save_state
from ray_jobs.config import TrainConfig
from ray_jobs.stages import best_metrics, finetune, train_head
from ray_jobs.tracking import StageLogger


def loop_config(config: TrainConfig, settings: Settings, parent_run_id: str, crash_marker: Path | None) -> dict:
    """The JSON-safe ``train_loop_config`` handed to :func:`train_loop_per_worker`."""
    return {
        "config": config.model_dump(mode="json"),
        "settings": settings.model_dump(mode="json"),
        "parent_run_id": parent_run_id,
        "crash_marker": str(crash_marker) if crash_marker else None,
    }


def _report(metrics: dict[str, float], state: TrainState) -> None:
    """Report ``metrics`` to Ray with a checkpoint of ``state`` written by rank 0 (all ranks must call this)."""
    with tempfile.TemporaryDirectory(prefix="pawfinder-ckpt-") as folder:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            save_state(state, Path(folder))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def _restored_state() -> TrainState | None:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return load_state(Path(folder))


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    """Ray Train entry: stage 1 (head on cached features) unless restored past it, then stage 2 (fine-tuning)."""
    config = TrainConfig.model_validate(loop["config"])
    settings = Settings.model_validate(loop["settings"])
    crash_marker = Path(loop["crash_marker"]) if loop.get("crash_marker") else None
    is_rank0 = ray.train.get_context().get_world_rank() == 0
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(config.cpus_per_worker)  # Ray sets OMP_NUM_THREADS=1 in workers
    torch.manual_seed(config.seed)
    manifest = load_manifest(settings)
    splits = {name: split_frame(manifest, name, limit_per_class=config.limit_per_class) for name in ("train", "val")}
    weights = settings.mobilenet_v2_weights if config.backbone == "mobilenet_v2" else None
    model = build_model(config.backbone, pretrained=config.pretrained, weights_path=weights, dropout=config.dropout)
    model.to(device)

    state = _restored_state()
    resumed_from = state.epoch if state is not None else -1
    tracking_uri, parent = settings.mlflow_tracking_uri or "", loop["parent_run_id"]
    if state is None:
        head_logger = StageLogger.open(tracking_uri, parent, "head", resume_run_id=None, is_rank0=is_rank0)
        state = train_head(model, config, settings, splits, device, head_logger)
        head_logger.finish()
        if head_logger.run_id:
            state.mlflow_runs["head"] = head_logger.run_id
        _report({**best_metrics(state), "epoch": 0.0, "resumed_from_epoch": -1.0}, state)

    logger = StageLogger.open(
        tracking_uri,
        parent,
        "finetune",
        resume_run_id=state.mlflow_runs.get("finetune"),
        is_rank0=is_rank0 and config.epochs > 0,
    )
    if logger.run_id:
        state.mlflow_runs["finetune"] = logger.run_id
    if resumed_from >= 0:
        logger.tags({"resumed_from_epoch": str(resumed_from)})

    def report(metrics: dict[str, float], current: TrainState) -> None:
        _report({**metrics, "resumed_from_epoch": float(resumed_from)}, current)

    finetune(model, state, config, settings, splits, device, logger, report, crash_marker=crash_marker)
    logger.finish()
