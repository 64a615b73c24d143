"""Search the fine-tuning learning rate and epochs with Ray Tune: ``python -m ray_jobs.tune --profile quick``.

Ray Train V2 + Tune: each trial is a function trainable that runs a complete ``TorchTrainer`` (the same one as
``ray_jobs.train``); the workers' per-epoch metrics reach Tune through ``TuneReportCallback``. Every trial is an
MLflow child run of one search run; the search optimises ``best_val_accuracy`` (val top-1 of the model each trial
selects; never test) and registers nothing: train the winner with ``python -m ray_jobs.train --lr ... --epochs ...``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import ray.tune
import typer
from mlflow import MlflowClient
from ray.tune.integration.ray_train import TuneReportCallback

from pawfinder.data.prepare import load_manifest
from pawfinder.settings import Settings
from ray_jobs.config import PROFILE_NAMES, TrainConfig, load_config
from ray_jobs.tracking import experiment_id, log_metrics
from ray_jobs.train import absolute_settings, connect_ray, fit, open_run

METRIC = "best_val_accuracy"
TRIAL_MEMORY_BYTES = 256 * 2**20


def run_trial(params: dict[str, Any], *, base: dict[str, Any], settings: dict[str, Any], parent_run_id: str) -> None:
    """One Tune trial: ``base`` config with the sampled ``params``, trained by a TorchTrainer, logged as a child run."""
    config = TrainConfig.model_validate({**base, **params})
    resolved = Settings.model_validate(settings)
    client = MlflowClient(resolved.mlflow_tracking_uri)
    name = f"{ray.tune.get_context().get_trial_name()}-{time.strftime('%H%M%S')}"
    run_id, _ = open_run(client, config, resolved, load_manifest(resolved), name, tags={}, parent_run_id=parent_run_id)
    try:
        state, _ = fit(config, resolved, run_id, name, callbacks=[TuneReportCallback()])
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    log_metrics(client, run_id, {METRIC: state.best_accuracy, "best_epoch": float(state.best_epoch)})
    client.set_terminated(run_id, status="FINISHED")


def run_search(
    config: TrainConfig,
    settings: Settings,
    *,
    samples: int,
    lr_range: tuple[float, float],
    epoch_choices: tuple[int, ...],
    max_concurrent: int = 1,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Sample ``samples`` (lr log-uniform in ``lr_range``, epochs from ``epoch_choices``); returns the best trial."""
    settings = absolute_settings(settings)
    client = MlflowClient(settings.mlflow_tracking_uri)
    name = f"tune-{config.profile}-{config.backbone}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    parent = client.create_run(experiment_id(client, config.experiment), run_name=name, tags={"kind": "tune"})
    parent_id = parent.info.run_id
    base = config.model_dump(mode="json") | {"register_model": False, "evaluate_split": None}
    try:
        connect_ray(ray_address)
        trainable = ray.tune.with_parameters(
            run_trial, base=base, settings=settings.model_dump(mode="json"), parent_run_id=parent_id
        )
        tuner = ray.tune.Tuner(
            # The trial only drives its TorchTrainer, which holds the CPUs: reserve a little memory, no CPU.
            ray.tune.with_resources(trainable, {"CPU": 0, "memory": TRIAL_MEMORY_BYTES}),
            param_space={"lr": ray.tune.loguniform(*lr_range), "epochs": ray.tune.choice(list(epoch_choices))},
            tune_config=ray.tune.TuneConfig(
                metric=METRIC, mode="max", num_samples=samples, max_concurrent_trials=max_concurrent
            ),
            run_config=ray.tune.RunConfig(
                name=name, storage_path=config.storage_path or str(settings.home / "ray_results")
            ),
        )
        best = tuner.fit().get_best_result()
    except BaseException:
        client.set_terminated(parent_id, status="FAILED")
        raise
    summary = {"run_id": parent_id, "best_config": best.config, METRIC: best.metrics.get(METRIC)}
    log_metrics(client, parent_id, {METRIC: float(summary[METRIC] or 0.0)})
    client.set_tag(parent_id, "best_config", json.dumps(best.config))
    client.set_terminated(parent_id, status="FINISHED")
    return summary


cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@cli.command()
def main(
    profile: str = typer.Option("quick", help=f"Base recipe: {', '.join(PROFILE_NAMES)}."),
    samples: int = typer.Option(4, min=1, help="Trials to run."),
    lr_min: float = typer.Option(3e-5, help="Smallest learning rate sampled (log-uniform)."),
    lr_max: float = typer.Option(1e-3, help="Largest learning rate sampled."),
    epochs: str = typer.Option("2,4", help="Fine-tuning epochs to choose from, comma-separated."),
    max_concurrent: int = typer.Option(1, min=1, help="Trials running at once."),
    limit_per_class: int | None = typer.Option(None, help="Cap on train/val images per breed."),
    experiment: str = typer.Option("pawfinder-tuning", help="MLflow experiment."),
    ray_address: str | None = typer.Option(None, help="Ray cluster address (default RAY_ADDRESS or a local one)."),
) -> None:
    """Search lr and epochs on the validation split; prints the best trial as JSON."""
    settings = Settings()
    try:
        epoch_choices = tuple(int(value) for value in epochs.split(",") if value.strip())
        config = load_config(
            profile,  # type: ignore[arg-type]
            backbone=settings.backbone,
            seed=settings.seed,
            limit_per_class=limit_per_class,
            experiment=experiment,
        )
        summary = run_search(
            config,
            settings,
            samples=samples,
            lr_range=(lr_min, lr_max),
            epoch_choices=epoch_choices,
            max_concurrent=max_concurrent,
            ray_address=ray_address,
        )
    except (ValueError, FileNotFoundError) as error:
        typer.secho(f"search failed: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from error
    typer.echo(json.dumps(summary, default=str))


if __name__ == "__main__":
    cli(sys.argv[1:])
