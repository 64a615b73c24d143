"""``pawfinder stack up|down|status``: the whole local stack on 127.0.0.1, state under PAWFINDER_HOME."""

from __future__ import annotations

import time

import typer

from pawfinder.cli import app
from pawfinder.settings import Settings
from pawfinder.stack import lifecycle
from pawfinder.stack.bootstrap import BootstrapError, ensure_champion
from pawfinder.stack.processes import ServiceError
from pawfinder.stack.services import stack_services

stack_app = typer.Typer(help="Start, stop and inspect the local stack (MLflow, Prefect, Ray, Serve, console).")
app.add_typer(stack_app, name="stack")


@stack_app.command()
def up(
    profile: str = typer.Option("quick", help="Training profile used when no champion exists yet."),
    bootstrap: bool = typer.Option(True, help="Train and promote a model when the registry has no champion."),
) -> None:
    """Start every service that is not running yet (idempotent), train a first champion if needed, print the URLs."""
    settings = Settings()
    services = stack_services(settings)
    started = time.monotonic()
    try:
        statuses = lifecycle.up(
            lifecycle.stack_manager(settings),
            services if bootstrap else [spec for spec in services if not spec.needs_model],
            echo=typer.echo,
            ensure_model=lambda: ensure_champion(settings, echo=typer.echo, profile=profile),
        )
    except (ServiceError, BootstrapError) as error:
        typer.secho(f"stack up failed: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from error
    typer.echo(f"\nPawFinder is up in {time.monotonic() - started:.0f}s (state and logs in {settings.home.resolve()}):")
    for status in statuses:
        typer.echo(f"  {status.name:<12} {status.url or '(no port)'}")
    if any(status.name == "serve" for status in statuses):
        typer.echo(f"Try it: curl -F file=@<photo.jpg> http://{settings.host}:{settings.serve_port}/predict")
    typer.echo(f"Stop everything with `pawfinder stack down`; logs: {settings.home.resolve() / 'logs'}")


@stack_app.command()
def down() -> None:
    """Stop exactly the processes `pawfinder stack up` started (by their recorded process groups)."""
    settings = Settings()
    lifecycle.down(lifecycle.stack_manager(settings), stack_services(settings), echo=typer.echo)


@stack_app.command()
def status() -> None:
    """Show each service: state (healthy / unhealthy / stopped), pid, port, URL."""
    settings = Settings()
    statuses = lifecycle.status(lifecycle.stack_manager(settings), stack_services(settings))
    typer.echo(lifecycle.format_table(statuses))
