"""``pawfinder evaluate | promote | rollback`` and ``pawfinder registry list``: the model's way to production."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import httpx
import typer

from pawfinder.cli import app
from pawfinder.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pawfinder.evaluation import EvaluationReport
    from pawfinder.registry import Evaluator

registry_app = typer.Typer(help="Inspect the model registry (versions, aliases, metrics).", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@contextmanager
def _fail_cleanly() -> Iterator[None]:
    """Turn expected failures into one red line on stderr and exit code 1 (no traceback)."""
    from mlflow.exceptions import MlflowException

    from pawfinder.data.annotations import AnnotationError
    from pawfinder.evaluation import ModelLoadError
    from pawfinder.inference import ModelFormatError
    from pawfinder.registry import RegistryError

    try:
        yield
    except (RegistryError, ModelLoadError, ModelFormatError, AnnotationError, FileNotFoundError, ValueError) as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from err
    except MlflowException as err:
        typer.secho(f"error: MLflow said: {err.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from err


def _client(settings: Settings) -> MlflowClient:
    """A registry client, after checking that an HTTP tracking server answers (MLflow itself retries for minutes)."""
    from pawfinder.registry import registry_client

    uri = str(settings.mlflow_tracking_uri)
    if uri.startswith(("http://", "https://")):
        try:
            httpx.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
        except httpx.HTTPError as err:
            typer.secho(
                f"error: MLflow is not reachable at {uri} ({err}); start it with `pawfinder stack up` "
                "or point PAWFINDER_MLFLOW_TRACKING_URI at a running server",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(1) from err
    return registry_client(settings)


@app.command()
def evaluate(
    model_uri: Annotated[
        str | None,
        typer.Option(
            help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., or a local .onnx file or folder. "
            "Default: models:/<model_name>@champion."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Dataset folder in the official layout. Default: PAWFINDER_DATA_DIR.")
    ] = None,
    split: Annotated[str, typer.Option(help="test, trainval, or train/val (carved from trainval).")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON report (top1, top5, n, ...).")] = False,
    log_to_mlflow: Annotated[bool, typer.Option(help="Record metrics on the model's run and version.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per ONNX Runtime call.")] = 32,
) -> None:
    """Evaluate a model on a dataset folder with the serving code path (decode, preprocess, ONNX Runtime)."""
    from pawfinder.evaluation import evaluate as run_evaluation
    from pawfinder.evaluation import load_model, log_evaluation

    settings = Settings()
    uri = model_uri or f"models:/{settings.model_name}@champion"
    folder = data_dir or settings.dataset_dir
    with _fail_cleanly(), redirect_stdout(sys.stderr):  # libraries' chatter must not mix with the report
        is_local = Path(uri).expanduser().exists()
        client = None if is_local and not log_to_mlflow else _client(settings)
        model, ref = load_model(uri, tracking_uri=settings.mlflow_tracking_uri)
        report = run_evaluation(model, folder, split, settings=settings, model_ref=ref, batch_size=batch_size)
        run_id = log_evaluation(report, client) if log_to_mlflow and client is not None else None
    for item in report.skipped:
        typer.secho(f"skipped {item.image}: {item.reason}: {item.message}", fg=typer.colors.YELLOW, err=True)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(report)
    if run_id:
        typer.echo(f"logged to MLflow run {run_id}", err=as_json)


def _print_report(report: EvaluationReport) -> None:
    version = f" version {report.model.version}" if report.model.version else ""
    typer.echo(f"{report.model.name}{version} on {report.data_dir} (split {report.split})")
    typer.echo(
        f"  top-1 {report.top1:.4f}   top-5 {report.top5:.4f}   ECE {report.ece:.4f}   macro-F1 {report.macro_f1:.4f}"
        f"   n {report.n}   skipped {len(report.skipped)}"
    )
    for variant, stats in report.per_variant.items():
        typer.echo(f"  {variant:<20} top-1 {stats['top1']:.4f}   n {stats['n']}")
    weakest = sorted(report.per_breed.items(), key=lambda item: item[1])[:5]
    typer.echo("  weakest breeds: " + ", ".join(f"{label} {accuracy:.2f}" for label, accuracy in weakest))


@app.command()
def promote(
    version: Annotated[str | None, typer.Argument(help="Version to promote. Default: the current challenger.")] = None,
    force: Annotated[
        bool, typer.Option(help="Skip the accuracy gate (never the smoke prediction); needs --reason.")
    ] = False,
    reason: Annotated[str | None, typer.Option(help="Why; recorded on the version (required with --force).")] = None,
    tolerance: Annotated[
        float | None, typer.Option(help="Allowed test top-1 drop. Default: PAWFINDER_PROMOTION_TOLERANCE.")
    ] = None,
    evaluate_missing: Annotated[
        bool, typer.Option(help="Evaluate a version without a recorded test_top1 on PAWFINDER_DATA_DIR's test split.")
    ] = True,
) -> None:
    """Move the `champion` alias to VERSION if it is not worse than the champion and its ONNX model runs."""
    from pawfinder.registry import promote as run_promotion

    settings = Settings()
    with _fail_cleanly():
        client = _client(settings)
        result = run_promotion(
            settings.model_name,
            version,
            client=client,
            force=force,
            reason=reason,
            tolerance=settings.promotion_tolerance if tolerance is None else tolerance,
            evaluator=_missing_metric_evaluator(settings, client) if evaluate_missing else None,
        )
    previous = f" (was version {result.previous_champion})" if result.previous_champion else ""
    typer.secho(f"version {result.version} of {result.name} is now champion{previous}", fg=typer.colors.GREEN)
    typer.echo(f"  gate: {result.gate}; reason: {result.reason}; by {result.promoted_by} at {result.promoted_at}")


def _missing_metric_evaluator(settings: Settings, client: MlflowClient) -> Evaluator | None:
    """Evaluates a version on the test split of PAWFINDER_DATA_DIR (and records it), when that split exists."""
    from pawfinder.data.layout import DatasetLayout
    from pawfinder.evaluation import evaluate_version

    if not DatasetLayout(settings.dataset_dir).test_file.is_file():
        return None

    def evaluator(name: str, version: str) -> float:
        typer.echo(f"version {version} has no test_top1: evaluating it on {settings.dataset_dir} ...", err=True)
        return evaluate_version(name, version, client=client, data_dir=settings.dataset_dir, settings=settings).top1

    return evaluator


@app.command()
def rollback(reason: Annotated[str | None, typer.Option(help="Why; recorded on both versions.")] = None) -> None:
    """Give the `champion` alias back to the version it replaced."""
    from pawfinder.registry import rollback as run_rollback

    settings = Settings()
    with _fail_cleanly():
        result = run_rollback(settings.model_name, client=_client(settings), reason=reason)
    typer.secho(
        f"version {result.restored} of {result.name} is champion again (version {result.demoted} rolled back)",
        fg=typer.colors.GREEN,
    )


@registry_app.command("list")
def list_command(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Versions of the model, newest first, with aliases, test metrics and promotion records."""
    from pawfinder.registry import gate_metric, list_versions

    settings = Settings()
    with _fail_cleanly():
        client = _client(settings)
        rows = [
            {
                "version": v.version,
                "aliases": v.aliases,
                "test_top1": gate_metric(v, client=client),
                "val_top1": gate_metric(v, client=client, key="val_top1"),
                "created": datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
                "run_id": v.run_id,
                "tags": v.tags,
            }
            for v in list_versions(settings.model_name, client=client)
        ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no versions of {settings.model_name!r} at {settings.mlflow_tracking_uri}: train one first")
        return
    typer.echo(f"{'version':>7}  {'aliases':<22} {'test_top1':>9} {'val_top1':>9}  {'created (UTC)':<25} promoted")
    for row in rows:
        top1 = {key: "-" if row[key] is None else f"{row[key]:.4f}" for key in ("test_top1", "val_top1")}
        promoted = " ".join(
            f"{key}={row['tags'][key]}" for key in ("promoted_at", "promotion_gate") if key in row["tags"]
        )
        aliases = ",".join(row["aliases"]) or "-"
        typer.echo(
            f"{row['version']:>7}  {aliases:<22} {top1['test_top1']:>9} {top1['val_top1']:>9}  {row['created']:<25} "
            f"{promoted}"
        )
