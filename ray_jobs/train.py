"""Train PawFinder on Ray: ``python -m ray_jobs.train --profile smoke|quick|full [overrides]``.

Also as a Ray job: ``ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m ray_jobs.train ...``
(exclude .venv, .pawfinder and data from the upload; pass PAWFINDER_* with absolute paths as env vars).

One MLflow parent run per training (child runs ``head`` and ``finetune`` logged by rank 0), a Ray Train
``TorchTrainer`` with a checkpoint every epoch and ``FailureConfig`` so a killed worker resumes from the last
checkpoint; then the best model is calibrated, exported to ONNX, logged and registered with alias ``challenger``.
The last line printed is a JSON summary.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import typer
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from pawfinder.data.prepare import load_manifest, manifest_hash
from pawfinder.data.torch_dataset import split_frame
from pawfinder.settings import LOOPBACK, Settings
from ray_jobs.checkpoints import TrainState, load_state
from ray_jobs.config import PROFILE_NAMES, TrainConfig, load_config
from ray_jobs.finalize import finalize
from ray_jobs.tracking import experiment_id, git_commit, log_params
from ray_jobs.worker import loop_config, train_loop_per_worker

CRASH_MARKER = "crash-injected"


def absolute_settings(settings: Settings) -> Settings:
    """The same settings with absolute paths, so that Ray workers in another working dir see the same files."""
    return settings.model_copy(
        update={
            "home": settings.home.resolve(),
            "data_dir": settings.dataset_dir.resolve(),
            "cache_dir": settings.prepared_dir.resolve(),
        }
    )


def connect_ray(address: str | None = None) -> None:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``, set inside a Ray job); else start a local one on
    127.0.0.1 (its dashboard on a free loopback port: Ray Train's cleanup watcher needs the state API). Does nothing
    when this process is already connected."""
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
        return
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        dashboard_port = sock.getsockname()[1]
    ray.init(
        _node_ip_address=LOOPBACK,
        include_dashboard=True,
        dashboard_host=LOOPBACK,
        dashboard_port=dashboard_port,
        _temp_dir=tempfile.mkdtemp(prefix="pfray-", dir="/tmp"),  # short: Ray's socket paths must stay < 108 chars
    )


def _storage_path(config: TrainConfig, settings: Settings) -> str:
    return config.storage_path or str(settings.home / "ray_results")


def fit(
    config: TrainConfig, settings: Settings, run_id: str, run_name: str, *, callbacks: list | None = None
) -> tuple[TrainState, int]:
    """Run the TorchTrainer; returns the last checkpoint's state and the epoch it last resumed from (-1 = never)."""
    storage = _storage_path(config, settings)
    crash_marker = Path(storage) / run_name / CRASH_MARKER if config.crash_at_epoch else None
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(config, settings, run_id, crash_marker),
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker, **({"GPU": 1} if config.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training {run_name} finished without a checkpoint; see the Ray logs under {storage}")
    with result.checkpoint.as_directory() as folder:
        state = load_state(Path(folder))
    return state, int((result.metrics or {}).get("resumed_from_epoch", -1))


def open_run(
    client: MlflowClient,
    config: TrainConfig,
    settings: Settings,
    manifest: pd.DataFrame,
    run_name: str,
    *,
    tags: dict[str, str],
    parent_run_id: str | None = None,
) -> tuple[str, str]:
    """Create the training's MLflow run with its parameters (config, data-manifest hash, git commit, data sizes).

    Returns the run id and the manifest hash.
    """
    tags = {"profile": config.profile, "backbone": config.backbone, **tags}
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = client.create_run(experiment_id(client, config.experiment), run_name=run_name, tags=tags)
    data_hash = manifest_hash(settings)
    sizes = {
        f"{split}_images": len(split_frame(manifest, split, limit_per_class=config.limit_per_class))
        for split in ("train", "val")
    }
    params = {**config.params(), "data_manifest_hash": data_hash, "git_commit": git_commit() or "unknown", **sizes}
    params |= {"settings.val_fraction": settings.val_fraction, "settings.data_dir": settings.dataset_dir}
    log_params(client, run.info.run_id, params)
    return run.info.run_id, data_hash


def run_training(
    config: TrainConfig,
    settings: Settings,
    *,
    run_tags: dict[str, str] | None = None,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Train, package and register one model; returns the summary (run id, model version, metrics, ...)."""
    settings = absolute_settings(settings)
    started = time.perf_counter()
    manifest = load_manifest(settings)
    val_rows = split_frame(manifest, "val", limit_per_class=config.limit_per_class)
    calibration_rows = split_frame(manifest, "train", limit_per_class=config.quantize_images_per_class)
    client = MlflowClient(settings.mlflow_tracking_uri)
    run_name = f"{config.profile}-{config.backbone}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_id, data_hash = open_run(client, config, settings, manifest, run_name, tags=run_tags or {})
    try:
        connect_ray(ray_address)
        state, resumed_from = fit(config, settings, run_id, run_name)
        client.set_tag(run_id, "resumed_from_epoch", str(resumed_from))
        train_seconds = time.perf_counter() - started
        extra = {"run_id": run_id, "profile": config.profile, "data_manifest_hash": data_hash}
        with tempfile.TemporaryDirectory(prefix="pawfinder-package-") as folder:
            summary = finalize(state, config, settings, val_rows, calibration_rows, client, run_id, Path(folder), extra)
        summary |= {"train_seconds": train_seconds, "total_seconds": time.perf_counter() - started}
        summary["resumed_from_epoch"] = resumed_from
        client.log_metric(run_id, "train_seconds", train_seconds)
        client.log_metric(run_id, "total_seconds", summary["total_seconds"])
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return summary


def _parse_tags(values: list[str]) -> dict[str, str]:
    tags = {}
    for value in values:
        key, sep, tag = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint="--run-tag")
        tags[key] = tag
    return tags


def _parse_sizes(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated sizes like 128,160, got {value!r}") from None


cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@cli.command()
def main(
    profile: str = typer.Option("quick", help=f"Recipe profile: {', '.join(PROFILE_NAMES)}."),
    backbone: str | None = typer.Option(None, help="Backbone (default PAWFINDER_BACKBONE)."),
    epochs: int | None = typer.Option(None, help="Fine-tuning epochs (0 = head only)."),
    head_epochs: int | None = typer.Option(None, help="Stage-1 head epochs on cached features."),
    lr: float | None = typer.Option(None, help="Peak fine-tuning learning rate."),
    batch_size: int | None = typer.Option(None),
    image_size: int | None = typer.Option(None, help="Eval crop size (default: the backbone's)."),
    train_sizes: str | None = typer.Option(None, help="Progressive-resizing train crops, e.g. 128,160,192."),
    seed: int | None = typer.Option(None, help="Seed (default PAWFINDER_SEED)."),
    patience: int | None = typer.Option(None, help="Early stopping patience in epochs."),
    freeze_batchnorm: bool | None = typer.Option(
        None, "--freeze-batchnorm/--train-batchnorm", help="Keep BatchNorm statistics fixed while fine-tuning."
    ),
    frozen_stages: int | None = typer.Option(None, help="Stem + this many stages stay frozen (-1 = none)."),
    augment: str | None = typer.Option(None, help="Train augmentation: trivialaugment, randaugment or none."),
    crop_scale: float | None = typer.Option(None, help="Smallest image-area share of a random train crop."),
    ema_decay: float | None = typer.Option(None, help="Per-step decay of the exported weight average (0 = off)."),
    limit_per_class: int | None = typer.Option(None, help="Cap on train/val images per breed."),
    pretrained: bool | None = typer.Option(None, "--pretrained/--no-pretrained"),
    num_workers: int | None = typer.Option(None, help="Ray Train workers."),
    use_gpu: bool | None = typer.Option(None, "--use-gpu/--no-use-gpu"),
    cpus_per_worker: int | None = typer.Option(None),
    loader_workers: int | None = typer.Option(None, help="DataLoader processes per worker."),
    max_failures: int | None = typer.Option(None, help="Worker failures to recover from."),
    experiment: str | None = typer.Option(None, help="MLflow experiment."),
    register: bool | None = typer.Option(None, "--register/--no-register", help="Register as 'challenger'."),
    quantize: bool | None = typer.Option(
        None, "--quantize/--no-quantize", help="Serve int8 when it keeps val top-1 within the tolerance."
    ),
    evaluate_split: str | None = typer.Option(None, help="Also evaluate this split (e.g. test) and log it."),
    storage_path: str | None = typer.Option(None, help="Ray storage: a directory or bucket URI."),
    run_tag: list[str] = typer.Option([], help="KEY=VALUE tag on the MLflow run (repeatable)."),  # noqa: B008
    ray_address: str | None = typer.Option(None, help="Ray cluster address (default RAY_ADDRESS or a local one)."),
    crash_at_epoch: int | None = typer.Option(None, hidden=True, help="Test only: kill a worker once."),
) -> None:
    """Train, calibrate, export and register a PawFinder model on Ray; prints a JSON summary last."""
    settings = Settings()
    try:
        config = load_config(
            profile,  # type: ignore[arg-type]
            backbone=backbone or settings.backbone,
            epochs=epochs,
            head_epochs=head_epochs,
            lr=lr,
            batch_size=batch_size,
            image_size=image_size,
            train_sizes=_parse_sizes(train_sizes),
            seed=settings.seed if seed is None else seed,
            patience=patience,
            freeze_batchnorm=freeze_batchnorm,
            frozen_stages=frozen_stages,
            augment=augment,
            crop_scale=crop_scale,
            ema_decay=ema_decay,
            limit_per_class=limit_per_class,
            pretrained=pretrained,
            num_workers=num_workers,
            use_gpu=use_gpu,
            cpus_per_worker=cpus_per_worker,
            loader_workers=loader_workers,
            max_failures=max_failures,
            experiment=experiment,
            register_model=register,
            quantize=quantize,
            evaluate_split=evaluate_split,
            storage_path=storage_path,
            crash_at_epoch=crash_at_epoch,
        )
        summary = run_training(config, settings, run_tags=_parse_tags(run_tag), ray_address=ray_address)
    except (ValueError, FileNotFoundError) as error:
        typer.secho(f"training failed: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from error
    typer.echo(json.dumps(summary, default=str))


if __name__ == "__main__":
    cli(sys.argv[1:])
