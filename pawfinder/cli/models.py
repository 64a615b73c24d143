"""``pawfinder models list | export-onnx | quantize | info``: backbones, ONNX export, int8, model metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pawfinder.cli import app
from pawfinder.settings import Settings

models_app = typer.Typer(help="Backbones, ONNX export and model metadata.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def list_backbones(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the backbones with their input preprocessing, embedding size and weights source."""
    from pawfinder.models.backbones import BACKBONES

    default = Settings().backbone
    rows = [
        {
            "name": b.name,
            "default": b.name == default,
            "embedding_dim": b.embedding_dim,
            "preprocessing": b.spec.model_dump(mode="json"),
            "weights": b.weights_source,
        }
        for b in BACKBONES.values()
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        spec = row["preprocessing"]
        mark = "*" if row["default"] else " "
        typer.echo(
            f"{mark} {row['name']:<20} {spec['crop_size']}px (resize {spec['resize_size']}, {spec['interpolation']})"
            f"  embedding {row['embedding_dim']}  weights: {row['weights']}"
        )


@models_app.command("export-onnx")
def export_onnx_command(
    out: Annotated[Path, typer.Option("--out", help="Destination .onnx file.")],
    backbone: Annotated[str | None, typer.Option(help="Backbone name; default PAWFINDER_BACKBONE.")] = None,
    pretrained: Annotated[bool, typer.Option(help="Load ImageNet weights into the backbone.")] = True,
    weights: Annotated[
        Path | None, typer.Option(help="Local backbone weights file (default for mobilenet_v2: settings).")
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17).")] = 17,
) -> None:
    """Export an untrained-head PawNet to ONE .onnx file with metadata, and print the torch-vs-ONNX parity.

    Useful for latency checks and smoke tests; trained models are exported by the training job.
    """
    import torch

    from pawfinder.models.backbones import (
        WeightsMismatchError,
        WeightsUnavailableError,
        build_model,
        configured_weights,
    )
    from pawfinder.models.onnx_export import export_onnx, metadata_for, onnx_parity

    settings = Settings()
    name = backbone or settings.backbone
    try:
        model = build_model(name, pretrained=pretrained, weights_path=weights or configured_weights(settings, name))
        path = export_onnx(model, out, metadata_for(model, settings.model_name, opset=opset), opset=opset)
    except (ValueError, WeightsUnavailableError, WeightsMismatchError) as err:
        typer.secho(f"export failed: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from err
    size = model.default_spec().crop_size
    parity = onnx_parity(model, path, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)))
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, max |logit diff| vs torch {parity:.2e})")


@models_app.command()
def quantize(
    source: Annotated[Path, typer.Argument(help="A float32 .onnx file exported by PawFinder.")],
    out: Annotated[Path, typer.Option("--out", help="Destination .onnx file.")],
    images_per_class: Annotated[int, typer.Option(help="Train images per breed that calibrate the ranges.")] = 4,
) -> None:
    """Write the int8 version of a model (static, per-channel), calibrated on prepared train images.

    Training does this itself (and keeps float32 when int8 loses accuracy); this is for models exported before.
    """
    from pawfinder.data.prepare import load_manifest
    from pawfinder.data.torch_dataset import split_frame
    from pawfinder.inference import ModelFormatError, OnnxClassifier
    from pawfinder.models.quantize import quantize_int8
    from pawfinder.preprocessing.numpy_ops import preprocessed_batches

    settings = Settings()
    try:
        spec = OnnxClassifier.from_path(source).metadata.preprocessing
        rows = split_frame(load_manifest(settings), "train", limit_per_class=images_per_class)
        batches = preprocessed_batches(list(rows["path"]), spec, max_pixels=settings.max_image_pixels, batch_size=16)
        path = quantize_int8(source, out, batches)
    except (ModelFormatError, FileNotFoundError, ValueError) as err:
        typer.secho(f"quantize failed: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from err
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, from {source.stat().st_size / 1e6:.1f} MB)")


@models_app.command()
def info(path: Annotated[Path, typer.Argument(help="An .onnx file or a directory holding exactly one.")]) -> None:
    """Print the metadata (labels, preprocessing, temperature, OOD threshold) stored in an exported model."""
    from pawfinder.inference import ModelFormatError, OnnxClassifier

    try:
        classifier = OnnxClassifier.from_path(path)
    except (ModelFormatError, FileNotFoundError) as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from err
    typer.echo(json.dumps(classifier.metadata.model_dump(mode="json"), indent=2))
