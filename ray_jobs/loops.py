"""One epoch of training or evaluation, data-parallel aware: training metrics are summed over all workers, eval logits
gathered from them."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from pawfinder.calibration import calibrated_nll

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class EpochStats:
    """Loss and top-1 over all workers' images of one pass, and its throughput."""

    loss: float
    accuracy: float
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class EvalStats(EpochStats):
    """An evaluation pass, with the NLL at the temperature fitted to it (``pawfinder.calibration.calibrated_nll``):
    what models are compared by."""

    calibrated_nll: float


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the current process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every worker's ``tensor`` in rank order (identity on one worker)."""
    size = world()[1]
    if size == 1:
        return tensor
    parts: list[torch.Tensor | None] = [None] * size
    dist.all_gather_object(parts, tensor)
    return torch.cat([p for p in parts if p is not None])


def eval_stats(logits: torch.Tensor, targets: torch.Tensor, criterion: nn.Module, seconds: float) -> EvalStats:
    """Loss, top-1 and calibrated NLL of the complete (already gathered) eval ``logits``."""
    if len(targets) == 0:
        raise ValueError("no images in this pass: the split is empty or smaller than the number of workers")
    logits, targets = logits.float().cpu(), targets.cpu()
    return EvalStats(
        loss=criterion(logits, targets).item(),
        accuracy=(logits.argmax(1) == targets).float().mean().item(),
        images=len(targets),
        seconds=seconds,
        calibrated_nll=calibrated_nll(logits.numpy(), targets.numpy()),
    )


def sum_over_workers(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all workers (identity on a single worker)."""
    if world()[1] == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def average_gradients(module: nn.Module) -> None:
    """Average the gradients of ``module`` over workers (for modules trained outside DDP, e.g. the stage-1 head)."""
    size = world()[1]
    if size == 1:
        return
    for param in module.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= size


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, floor: float = 0.01
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up to the optimizer's learning rate, then cosine decay to ``floor`` of it."""
    factor = functools.partial(warmup_cosine_factor, total_steps=total_steps, warmup_steps=warmup_steps, floor=floor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, floor: float = 0.01) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up to 1, then cosine decay to ``floor``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def freeze_batchnorm_statistics(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode: running statistics stay fixed, their affine weights still train."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def train_epoch(
    model: nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: nn.Module,
    device: torch.device,
    *,
    channels_last: bool = False,
    frozen_batchnorm: bool = False,
    after_step: Callable[[], None] | None = None,
) -> EpochStats:
    """One optimisation pass; the scheduler (then ``after_step``) runs every batch. On GPU the forward runs in
    bfloat16 autocast."""
    model.train()
    if frozen_batchnorm:
        freeze_batchnorm_statistics(model)
    start = time.perf_counter()
    loss_sum = correct = count = 0.0
    for images, targets in batches:
        images, targets = _to_device(images, device, channels_last), targets.to(device, non_blocking=True)
        with _autocast(device):
            logits = model(images)
            loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step()
        loss_sum += loss.item() * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        count += len(targets)
    return _stats(loss_sum, correct, count, time.perf_counter() - start, device)


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Batches, criterion: nn.Module, device: torch.device, *, channels_last: bool = False
) -> EvalStats:
    """Loss, top-1 and calibrated NLL of ``model`` in eval mode over all workers' ``batches``."""
    model.eval()
    start = time.perf_counter()
    logits, targets = [], []
    for images, labels in batches:
        with _autocast(device):
            logits.append(model(_to_device(images, device, channels_last)).float().cpu())
        targets.append(labels)
    all_logits = gather(torch.cat(logits) if logits else torch.empty(0))
    all_targets = gather(torch.cat(targets) if targets else torch.empty(0, dtype=torch.int64))
    return eval_stats(all_logits, all_targets, criterion, time.perf_counter() - start)


def _stats(loss_sum: float, correct: float, count: float, seconds: float, device: torch.device) -> EpochStats:
    loss_sum, correct, count = sum_over_workers([loss_sum, correct, count], device)
    if count == 0:
        raise ValueError("no images in this pass: the split is empty or smaller than the number of workers")
    return EpochStats(loss=loss_sum / count, accuracy=correct / count, images=int(count), seconds=seconds)
