"""Prefect flow ``training-pipeline``: download → prepare → train (a Ray job) → evaluate → register → promote.

Data preparation and evaluation run in the flow's process with the core package; training runs on the Ray cluster
at ``PAWFINDER_RAY_ADDRESS`` as ``python -m ray_jobs.train`` submitted through the Ray Jobs API with the project's
code as working_dir. The flow and the job are coupled only through CLI flags and MLflow: the flow tags the training
run (``--run-tag pawfinder.flow_run_id=<id>``) and finds its run and registered version by that tag.

Run it locally with ``python -m flows.training --profile quick`` (add ``--auto-promote`` to move ``champion``).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Literal

import typer
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.runtime import flow_run

from flows.ray_job import project_runtime_env, run_ray_job
from pawfinder.settings import Settings

Profile = Literal["smoke", "quick", "full"]
FLOW_RUN_TAG = "pawfinder.flow_run_id"


@dataclass(frozen=True)
class TrainingOutcome:
    """What the training job produced, found in MLflow by the flow's tag."""

    submission_id: str
    run_id: str
    experiment_id: str
    version: str


def job_env(settings: Settings) -> dict[str, str]:
    """``PAWFINDER_*`` variables that give the Ray job exactly these settings (paths made absolute)."""
    values = settings.model_dump(mode="json")
    values.update(home=str(settings.home.resolve()), data_dir=str(settings.dataset_dir.resolve()))
    values.update(cache_dir=str(settings.prepared_dir.resolve()))
    env = {
        f"PAWFINDER_{key.upper()}": value if isinstance(value, str) else json.dumps(value)
        for key, value in values.items()
        if value is not None
    }
    return {**env, "MLFLOW_TRACKING_URI": str(settings.mlflow_tracking_uri)}


def train_command(
    settings: Settings,
    *,
    profile: Profile,
    tag: str,
    backbone: str | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    extra_args: list[str] | None = None,
) -> str:
    """The Ray job entrypoint for these parameters (``None`` keeps the profile's default)."""
    args = [settings.ray_job_python, "-m", "ray_jobs.train", "--profile", profile, "--run-tag", f"{FLOW_RUN_TAG}={tag}"]
    for flag, value in (("--backbone", backbone), ("--epochs", epochs), ("--lr", lr), ("--batch-size", batch_size)):
        if value is not None:
            args += [flag, str(value)]
    return shlex.join([*args, *(extra_args or [])])


@task(name="download", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def download_dataset(settings: Settings) -> str:
    """Make sure the dataset is under ``settings.dataset_dir``; skipped when it already holds it."""
    from pawfinder.data.layout import DatasetLayout

    logger = get_run_logger()
    layout = DatasetLayout(settings.dataset_dir)
    if layout.has_annotations() and layout.images_dir.is_dir():
        logger.info("Dataset present at %s: download skipped", layout.root)
        return str(layout.root)
    from pawfinder.data.download import download

    logger.info("Downloading the Oxford-IIIT Pet dataset into %s", layout.root)
    download(settings)
    return str(layout.root)


def _prepare_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """Cache ``prepare`` only while its inputs and outputs are untouched: manifest hash + directory stamps + config.

    Adding, removing or renaming an image changes its folder's mtime, editing a split file changes the file's;
    without a manifest there is no key, so the first run always prepares.
    """
    from pawfinder.data.layout import DatasetLayout
    from pawfinder.data.prepare import cache_root, manifest_hash, manifest_path

    settings: Settings = parameters["settings"]
    if not manifest_path(settings).is_file():
        return None
    layout = DatasetLayout(settings.dataset_dir)
    watched = (layout.images_dir, layout.list_file, layout.trainval_file, layout.test_file, layout.variants_file)
    watched += (manifest_path(settings), cache_root(settings) / "images")
    stamps = [path.stat().st_mtime_ns if path.exists() else 0 for path in watched]
    config = (settings.dataset_dir.resolve(), settings.prepared_dir.resolve(), settings.prepare_short_side)
    config += (settings.val_fraction, settings.seed)
    key = json.dumps([manifest_hash(settings), stamps, [str(item) for item in config]])
    return "prepare-" + hashlib.sha256(key.encode()).hexdigest()


@task(name="prepare", cache_key_fn=_prepare_cache_key, persist_result=True)
def prepare_data(settings: Settings) -> dict[str, Any]:
    """Bring the prepared-image cache and its manifest up to date (incremental)."""
    from pawfinder.data.prepare import manifest_hash, prepare

    report = prepare(settings).to_dict()
    get_run_logger().info("Prepared data: %s", json.dumps(report, default=str))
    return {**report, "manifest_hash": manifest_hash(settings)}


@task(name="train", cache_policy=NO_CACHE)
def train_on_ray(settings: Settings, entrypoint: str, tag: str) -> TrainingOutcome:
    """Submit the training job to Ray, stream its log here, and find the run and model version it registered."""
    logger = get_run_logger()
    result = run_ray_job(
        str(settings.ray_address),
        entrypoint,
        runtime_env=project_runtime_env(job_env(settings)),
        metadata={FLOW_RUN_TAG: tag},
        log=logger.info,
    )
    return _training_outcome(settings, tag, result.submission_id)


def _training_outcome(settings: Settings, tag: str, submission_id: str) -> TrainingOutcome:
    """The MLflow run the job tagged with ``tag`` and the newest model version registered from it."""
    from pawfinder.registry import list_versions, registry_client

    client = registry_client(settings)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = {run.info.run_id: run for run in client.search_runs(experiments, f"tags.`{FLOW_RUN_TAG}` = '{tag}'")}
    versions = [
        version
        for version in list_versions(settings.model_name, client=client)
        if (version.run_id or version.tags.get("run_id")) in runs
    ]
    if not versions:
        raise RuntimeError(
            f"the training job {submission_id} succeeded but no version of {settings.model_name!r} was registered "
            f"from a run tagged {FLOW_RUN_TAG}={tag} in {settings.mlflow_tracking_uri}"
        )
    version = versions[0]  # newest first
    run = runs[version.run_id or version.tags["run_id"]]
    return TrainingOutcome(submission_id, run.info.run_id, run.info.experiment_id, version.version)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_version(settings: Settings, version: str, split: str) -> dict[str, Any]:
    """Evaluate the new version on ``split`` through the serving code path; metrics go to MLflow and version tags."""
    from pawfinder.evaluation import evaluate_version as evaluate_registered
    from pawfinder.registry import registry_client

    report = evaluate_registered(
        settings.model_name,
        version,
        client=registry_client(settings),
        data_dir=settings.dataset_dir,
        settings=settings,
        split=split,
    )
    get_run_logger().info("%s v%s on %s: top-1 %.4f, n=%d", settings.model_name, version, split, report.top1, report.n)
    return report.to_dict()


@task(name="register", cache_policy=NO_CACHE)
def register_challenger(settings: Settings, outcome: TrainingOutcome, tag: str, manifest: str) -> None:
    """Point ``challenger`` at the new version and record where it came from as version tags."""
    from pawfinder.registry import CHALLENGER, registry_client, set_alias

    client = registry_client(settings)
    set_alias(settings.model_name, CHALLENGER, outcome.version, client=client)
    tags = {FLOW_RUN_TAG: tag, "ray_submission_id": outcome.submission_id, "data_manifest": manifest}
    for key, value in tags.items():
        client.set_model_version_tag(settings.model_name, outcome.version, key, value)
    get_run_logger().info("%s v%s is the %s", settings.model_name, outcome.version, CHALLENGER)


@task(name="promote", cache_policy=NO_CACHE)
def promote_version(settings: Settings, version: str) -> dict[str, Any]:
    """Gated promotion to ``champion``; a refused gate is reported, not a failure of the pipeline."""
    from pawfinder.registry import PromotionRefused, promote, registry_client

    logger = get_run_logger()
    try:
        result = promote(settings.model_name, version, client=registry_client(settings))
    except PromotionRefused as refused:
        logger.warning("Promotion refused: %s", refused)
        return {"promoted": False, "reason": str(refused)}
    logger.info("%s v%s is the champion (gate %s)", settings.model_name, version, result.gate)
    return {"promoted": True, **asdict(result)}


def report_markdown(
    settings: Settings, outcome: TrainingOutcome, metrics: dict[str, Any], promotion: dict[str, Any] | None
) -> str:
    """The Prefect artifact: headline metrics, where the model is, what happened to ``champion``."""
    run_url = f"{settings.mlflow_tracking_uri}/#/experiments/{outcome.experiment_id}/runs/{outcome.run_id}"
    model_url = f"{settings.mlflow_tracking_uri}/#/models/{settings.model_name}/versions/{outcome.version}"
    lines = [
        f"# Training pipeline: {settings.model_name} v{outcome.version}",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {key} | {metrics[key]:.4f} |" for key in ("top1", "top5", "ece", "macro_f1") if key in metrics),
        f"| n | {metrics.get('n')} |",
        "",
        f"- MLflow run: [{outcome.run_id}]({run_url})",
        f"- Model version: [{settings.model_name} v{outcome.version}]({model_url}) (alias `challenger`)",
        f"- Ray job: `{outcome.submission_id}`",
    ]
    if promotion is None:
        lines.append("- Promotion: not requested (run `pawfinder promote` to move `champion`)")
    elif promotion["promoted"]:
        lines.append(f"- Promotion: **champion** (gate {promotion['gate']}: {promotion['reason']})")
    else:
        lines.append(f"- Promotion: refused — {promotion['reason']}")
    for variant, stats in (metrics.get("per_variant") or {}).items():
        lines.append(f"- top-1 on `{variant}` images: {stats['top1']:.4f} (n={stats.get('n', '?')})")
    return "\n".join(lines)


@flow(name="training-pipeline", log_prints=True)
def training_pipeline(
    profile: Profile = "quick",
    backbone: str | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    extra_args: list[str] | None = None,
    auto_promote: bool = False,
    train_retries: int = 0,
    evaluation_split: str = "test",
) -> dict[str, Any]:
    """Train a new model version on Ray, evaluate it, make it the challenger and optionally promote it.

    ``extra_args`` go verbatim to ``python -m ray_jobs.train``; ``train_retries`` resubmits a failed training job.
    """
    settings = Settings()
    tag = flow_run.get_id() or uuid.uuid4().hex
    download_dataset(settings)
    prepared = prepare_data(settings)
    entrypoint = train_command(
        settings,
        profile=profile,
        tag=tag,
        backbone=backbone,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        extra_args=extra_args,
    )
    outcome = train_on_ray.with_options(retries=train_retries, retry_delay_seconds=10)(settings, entrypoint, tag)
    metrics = evaluate_version(settings, outcome.version, evaluation_split)
    register_challenger(settings, outcome, tag, prepared["manifest_hash"])
    promotion = promote_version(settings, outcome.version) if auto_promote else None
    create_markdown_artifact(
        report_markdown(settings, outcome, metrics, promotion),
        key="training-report",
        description=f"{settings.model_name} v{outcome.version}",
    )
    return {"training": asdict(outcome), "metrics": metrics, "promotion": promotion}


def main(
    profile: str = typer.Option("quick", help="Training profile: smoke, quick or full."),
    backbone: str | None = typer.Option(None, help="Backbone; default: the profile's / PAWFINDER_BACKBONE."),
    epochs: int | None = typer.Option(None),
    lr: float | None = typer.Option(None),
    batch_size: int | None = typer.Option(None),
    auto_promote: bool = typer.Option(False, help="Promote to champion if the gate passes."),
    train_retries: int = typer.Option(0, help="Resubmit a failed training job this many times."),
) -> None:
    """Run the training pipeline once, here (reporting to the Prefect server at PREFECT_API_URL, if any)."""
    result = training_pipeline(
        profile=profile,  # type: ignore[arg-type]
        backbone=backbone,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        auto_promote=auto_promote,
        train_retries=train_retries,
    )
    typer.echo(json.dumps({key: result[key] for key in ("training", "promotion")}, indent=2, default=str))


if __name__ == "__main__":
    typer.run(main)
