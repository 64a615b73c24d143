"""The two stages of the recipe, run on every Ray Train worker.

Stage 1 (``head``): the ImageNet trunk is frozen; its features of the train and val images are computed once
(cached on disk, each worker its shard, then gathered) and a linear head is trained on them with AdamW and label
smoothing; the head with the lowest calibrated val NLL is kept.
Stage 2 (``finetune``): the network is trained except its stem and first ``frozen_stages`` stages (generic
features; skipping their backward makes an epoch about twice as fast on CPU), with AdamW (no decay on norms and
biases), linear warm-up then cosine decay per step, label smoothing, BatchNorm statistics kept at their ImageNet values
(``freeze_batchnorm``: statistics of small, augmented batches at a lower resolution wreck the eval-time features;
measured on this dataset), the augmentation of ``train_transform`` and progressive resizing
(``TrainConfig.train_sizes``). An exponential moving average of the weights (``ema_decay``) is what val is
measured on, at the eval resolution, every epoch, and what is exported. Models are compared by their calibrated
val NLL (the NLL at the temperature fitted to them, as they will be served), not by top-1 or the raw loss: on the 551
val images one image moves top-1 by 0.18 points and picking epochs by it kept choosing earlier models that were worse
on test; the raw loss also moves with the confidence scale, which changes with the train resolution (measured:
docs/benchmarks.md). It stops early after ``patience`` epochs without a lower calibrated NLL at the last train size
(epochs at lower train sizes neither count nor set the bar: a lower-resolution phase scores differently at the eval
resolution). The best model so far (the stage-1 one included) travels in every checkpoint and is the one exported.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import ray.train
import ray.train.torch
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from pawfinder.data.prepare import cache_root
from pawfinder.data.torch_dataset import ManifestDataset
from pawfinder.models.backbones import PawNet
from pawfinder.preprocessing.torch_ops import eval_transform, train_transform
from pawfinder.settings import Settings
from ray_jobs.averaging import WeightAverage
from ray_jobs.checkpoints import TrainState, detached
from ray_jobs.config import TrainConfig
from ray_jobs.features import cached_features, features_key
from ray_jobs.loops import EpochStats, EvalStats, eval_stats, evaluate, gather, train_epoch, warmup_cosine, world
from ray_jobs.tracking import StageLogger

#: Called after every checkpointable step with the metrics and the state to save.
Reporter = Callable[[dict[str, float], TrainState], None]


def _say(message: str) -> None:
    """Progress line in the job log (rank 0 only)."""
    if world()[0] == 0:
        print(f"[pawfinder] {message}", flush=True)


def _shard(rows: pd.DataFrame) -> pd.DataFrame:
    rank, size = world()
    return rows.iloc[rank::size]


def _features(
    model: PawNet, rows: pd.DataFrame, config: TrainConfig, settings: Settings, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    spec = config.eval_spec()
    part = _shard(rows)
    key = features_key(config.backbone, spec, part, random_init_seed=None if config.pretrained else config.seed)
    dataset = ManifestDataset.from_frame(part, eval_transform(spec), max_pixels=settings.max_image_pixels)
    features, targets = cached_features(
        model,
        dataset,
        cache_root(settings) / "features" / f"{config.backbone}-{key}.pt",
        device,
        loader_workers=config.loader_workers,
    )
    return gather(features).to(device), gather(targets).to(device)


@torch.no_grad()
def _head_eval(head: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module) -> EvalStats:
    head.eval()
    start = time.perf_counter()
    return eval_stats(head(x), y, criterion, time.perf_counter() - start)


def train_head(
    model: PawNet,
    config: TrainConfig,
    settings: Settings,
    splits: dict[str, pd.DataFrame],
    device: torch.device,
    logger: StageLogger,
) -> TrainState:
    """Stage 1: the linear head on cached frozen features. Returns the state with the best head."""
    started = time.perf_counter()
    x_train, y_train = _features(model, splits["train"], config, settings, device)
    x_val, y_val = _features(model, splits["val"], config, settings, device)
    logger.metrics({"feature_seconds": time.perf_counter() - started}, step=0)
    _say(f"stage 1: features of {len(y_train)} train + {len(y_val)} val images in {time.perf_counter() - started:.0f}s")
    head = nn.Sequential(model.dropout, model.head)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.head_lr, weight_decay=config.head_weight_decay)
    steps = math.ceil(len(y_train) / config.head_batch_size)
    scheduler = warmup_cosine(optimizer, total_steps=config.head_epochs * steps, warmup_steps=steps)
    generator = torch.Generator().manual_seed(config.seed)
    state = TrainState(stage="head", epoch=0, model={}, best_model={}, best_accuracy=0.0, best_epoch=0)
    best_head: dict[str, torch.Tensor] = {}
    for epoch in range(config.head_epochs):
        head.train()
        epoch_start = time.perf_counter()
        lr = scheduler.get_last_lr()[0]
        loss_sum = correct = 0.0
        for index in torch.randperm(len(y_train), generator=generator).to(device).split(config.head_batch_size):
            logits = head(x_train[index])
            loss = criterion(logits, y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(index)
            correct += (logits.argmax(1) == y_train[index]).sum().item()
        train = EpochStats(
            loss_sum / len(y_train), correct / len(y_train), len(y_train), time.perf_counter() - epoch_start
        )
        val = _head_eval(head, x_val, y_val, criterion)
        metrics = epoch_metrics(train, val, lr)
        logger.metrics(metrics, step=epoch + 1)
        state.history.append({"stage": "head", "epoch": epoch + 1, **metrics})
        if val.calibrated_nll < state.best_nll:
            state.best_nll, state.best_accuracy = val.calibrated_nll, val.accuracy
            best_head = detached(model.head.state_dict())
    model.head.load_state_dict(best_head)
    _say(
        f"stage 1: head trained for {config.head_epochs} epochs, best calibrated val NLL {state.best_nll:.3f} "
        f"(top-1 {state.best_accuracy:.4f})"
    )
    state.model = detached(model.state_dict())
    state.best_model = state.model
    logger.metrics({**best_metrics(state), "seconds": time.perf_counter() - started}, step=0)
    return state


def best_metrics(state: TrainState) -> dict[str, float]:
    """Calibrated val NLL and top-1 of the best model so far."""
    return {"best_val_nll_calibrated": state.best_nll, "best_val_accuracy": state.best_accuracy}


def epoch_metrics(train: EpochStats, val: EvalStats, lr: float) -> dict[str, float]:
    """The per-epoch metrics logged to MLflow and reported to Ray."""
    return {
        "train_loss": train.loss,
        "train_accuracy": train.accuracy,
        "val_loss": val.loss,
        "val_nll_calibrated": val.calibrated_nll,
        "val_accuracy": val.accuracy,
        "lr": lr,
        "images_per_s": train.images_per_s,
    }


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices and kernels, none on norm weights and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _maybe_crash(config: TrainConfig, epoch: int, marker: Path | None) -> None:
    """Test-only fault injection: rank 0 dies abruptly, once, before fine-tuning epoch ``config.crash_at_epoch``.

    It first waits until Ray has registered the checkpoints already reported (a worker killed at a random moment
    can lose the report still in flight, i.e. at most one epoch), so the epoch it resumes from is deterministic.
    """
    if config.crash_at_epoch != epoch + 1 or marker is None or world()[0] != 0 or marker.exists():
        return
    ray.train.get_all_reported_checkpoints(timeout_s=120)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"worker {os.getpid()} killed before epoch {epoch + 1}\n", encoding="utf-8")
    os._exit(1)


def finetune(
    model: PawNet,
    state: TrainState,
    config: TrainConfig,
    settings: Settings,
    splits: dict[str, pd.DataFrame],
    device: torch.device,
    logger: StageLogger,
    report: Reporter,
    *,
    crash_marker: Path | None = None,
) -> TrainState:
    """Stage 2: fine-tune everything from ``state`` (resuming its optimiser and schedule); reports every epoch."""
    rank, size = world()
    # channels_last: oneDNN's fast layout on CPU too (measured on the 2-core reference machine, lite0 batch 32:
    # +32 % train images/s at 160 px, +46 % at 224 px) and the tensor-core layout on GPU.
    channels_last = True
    model.to(memory_format=torch.channels_last)
    model.load_state_dict(state.model)
    model.freeze_stages(config.frozen_stages)
    average = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
    if average is not None and state.average is not None:
        average.load_state_dict(state.average)
    trained = ray.train.torch.prepare_model(model)
    evaluated = average.model if average is not None else trained
    spec = config.eval_spec()
    val_set = ManifestDataset.from_frame(
        _shard(splits["val"]), eval_transform(spec), max_pixels=settings.max_image_pixels
    )
    val_batches = DataLoader(val_set, batch_size=config.batch_size * 2, num_workers=config.loader_workers)
    train_rows = splits["train"]
    sampler = DistributedSampler(range(len(train_rows)), num_replicas=size, rank=rank, shuffle=True, seed=config.seed)
    drop_last = len(sampler) > config.batch_size
    steps = len(sampler) // config.batch_size if drop_last else math.ceil(len(sampler) / config.batch_size)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    scheduler = warmup_cosine(
        optimizer, total_steps=config.epochs * steps, warmup_steps=round(config.warmup_epochs * steps)
    )
    if state.optimizer is not None and state.scheduler is not None:
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
    for epoch in range(state.epoch, config.epochs):
        if state.bad_epochs >= config.patience and config.may_stop_early(epoch):
            break
        _maybe_crash(config, epoch, crash_marker)
        torch.manual_seed(config.seed * 1000 + epoch * size + rank)
        sampler.set_epoch(epoch)
        transform = train_transform(
            spec,
            crop_size=config.train_size(epoch),
            augment=config.augment,
            random_erasing=config.random_erasing,
            crop_scale=config.crop_scale,
        )
        train_set = ManifestDataset.from_frame(train_rows, transform, max_pixels=settings.max_image_pixels)
        batches = DataLoader(
            train_set,
            batch_size=config.batch_size,
            sampler=sampler,
            num_workers=config.loader_workers,
            drop_last=drop_last,
            pin_memory=device.type == "cuda",
        )
        lr = scheduler.get_last_lr()[0]
        train = train_epoch(
            trained,
            batches,
            optimizer,
            scheduler,
            criterion,
            device,
            channels_last=channels_last,
            frozen_batchnorm=config.freeze_batchnorm,
            after_step=(lambda: average.update(model)) if average is not None else None,
        )
        val = evaluate(evaluated, val_batches, criterion, device, channels_last=channels_last)
        metrics = {**epoch_metrics(train, val, lr), "train_size": float(config.train_size(epoch))}
        state.stage, state.epoch = "finetune", epoch + 1
        state.history.append({"stage": "finetune", "epoch": epoch + 1, **metrics})
        if config.may_stop_early(epoch):  # patience counts at the last train size only
            if val.calibrated_nll < state.best_finetune_nll:
                state.best_finetune_nll, state.bad_epochs = val.calibrated_nll, 0
            else:
                state.bad_epochs += 1
        state.model = detached(model.state_dict())
        state.average = detached(average.state_dict()) if average is not None else None
        if val.calibrated_nll < state.best_nll:
            state.best_nll, state.best_accuracy, state.best_epoch = val.calibrated_nll, val.accuracy, epoch + 1
            state.best_model = state.average if state.average is not None else state.model
        state.optimizer, state.scheduler = optimizer.state_dict(), scheduler.state_dict()
        logger.metrics({**metrics, **best_metrics(state)}, step=epoch + 1)
        _say(
            f"stage 2: epoch {epoch + 1}/{config.epochs} at {config.train_size(epoch)}px: "
            f"train loss {train.loss:.3f} top-1 {train.accuracy:.4f}, "
            f"val loss {val.loss:.3f} calibrated NLL {val.calibrated_nll:.3f} top-1 {val.accuracy:.4f}, "
            f"{train.images_per_s:.1f} img/s, "
            f"{train.seconds + val.seconds:.0f}s"
        )
        report({**metrics, **best_metrics(state), "epoch": float(epoch + 1)}, state)
    return state
