"""``pawfinder serve``: run the Ray Serve prediction API in the foreground, on 127.0.0.1 by default."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from types import FrameType

import typer

from pawfinder.cli import app
from pawfinder.settings import LOOPBACK, Settings
from pawfinder.stack.serve_ingress import serve_ingress_env


@app.command("serve")
def serve_command(
    port: int | None = typer.Option(None, help="HTTP port (default PAWFINDER_SERVE_PORT)."),
    ray_address: str | None = typer.Option(
        None,
        envvar="RAY_ADDRESS",
        help="GCS address of a running Ray cluster (host:port); default: start a private loopback Ray instance.",
    ),
) -> None:
    """Serve /predict (and /docs, /metrics, ...) with the registry's champion until Ctrl-C or SIGTERM."""
    settings = Settings()
    if port is not None:
        settings = settings.model_copy(update={"serve_port": port})
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray off public interfaces
    if not ray_address:  # a running cluster keeps the ingress it was started with (`pawfinder stack up` sets it)
        os.environ.update(serve_ingress_env(settings))
    import ray
    from ray import serve

    from serve.app import pawfinder_app, start_serve

    if ray_address:
        ray.init(address=ray_address, _node_ip_address=LOOPBACK, log_to_driver=False)
    else:
        ray.init(
            _node_ip_address=LOOPBACK,
            include_dashboard=False,
            _temp_dir=tempfile.mkdtemp(prefix="pfserve-", dir="/tmp"),  # short: socket paths must stay < 108 chars
            log_to_driver=False,
        )
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        start_serve(settings)
        serve.run(pawfinder_app(settings), name="pawfinder", route_prefix="/")
        typer.echo(f"PawFinder API on http://{settings.host}:{settings.serve_port} (docs at /docs); Ctrl-C stops it")
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
