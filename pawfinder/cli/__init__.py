"""The ``pawfinder`` command line: one Typer app, one sub-module per area."""

from __future__ import annotations

import json

import typer

from pawfinder.settings import Settings

app = typer.Typer(help="PawFinder: cat and dog breed recognition, from data to production.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """PawFinder command line; settings come from PAWFINDER_* environment variables (see `pawfinder config`)."""


@app.command()
def config(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of KEY=value lines.")) -> None:
    """Print the effective settings (defaults overridden by PAWFINDER_* environment variables)."""
    values = Settings().model_dump(mode="json")
    if as_json:
        typer.echo(json.dumps(values, indent=2))
        return
    for key, value in values.items():
        typer.echo(f"PAWFINDER_{key.upper()}={value}")


# Each area's module registers its commands on `app` when imported.
from pawfinder.cli import (  # noqa: E402
    data,  # noqa: F401  (registers `pawfinder data`)
    model,  # noqa: F401  (registers `pawfinder evaluate|promote|rollback|registry`)
    models,  # noqa: F401  (registers `pawfinder models`)
    serve,  # noqa: F401  (registers `pawfinder serve`)
    stack,  # noqa: F401  (registers `pawfinder stack`)
)
