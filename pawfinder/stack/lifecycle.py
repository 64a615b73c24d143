"""``up``, ``down`` and ``status`` of a list of services managed by one ``ProcessManager``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from pawfinder.settings import Settings
from pawfinder.stack.processes import ProcessManager, ServiceSpec, ServiceStatus

Echo = Callable[[str], None]


def stack_manager(settings: Settings) -> ProcessManager:
    """The process manager of the stack under ``PAWFINDER_HOME`` (PID records in ``run/``, logs in ``logs/``)."""
    home = settings.home.resolve()
    return ProcessManager(run_dir=home / "run", log_dir=home / "logs")


def up(
    manager: ProcessManager,
    services: Sequence[ServiceSpec],
    *,
    echo: Echo,
    ensure_model: Callable[[], None] | None = None,
) -> list[ServiceStatus]:
    """Start every service not yet running, in order; reuse those that run. Idempotent.

    ``ensure_model`` runs once, right before the first service that needs a model (e.g. bootstrap training).
    """
    statuses = []
    model_ready = ensure_model is None
    for spec in services:
        if spec.needs_model and not model_ready:
            assert ensure_model is not None
            ensure_model()
            model_ready = True
        started = time.monotonic()
        echo(f"• {spec.name}: starting…" if manager.record(spec.name) is None else f"• {spec.name}: already running")
        status = manager.start(spec)
        verb = "reused" if status.reused else f"healthy in {time.monotonic() - started:.1f}s"
        echo(f"  {spec.name}: {verb} (pid {status.pid}{f', port {spec.port}' if spec.port else ''})")
        statuses.append(status)
    return statuses


def down(manager: ProcessManager, services: Sequence[ServiceSpec], *, echo: Echo) -> list[str]:
    """Stop every service this manager started, in reverse start order; returns the names that were stopped."""
    known = [spec.name for spec in services]
    timeouts = {spec.name: spec.stop_timeout for spec in services}
    others = sorted(set(manager.recorded_names()) - set(known))
    stopped = []
    for name in [*reversed(known), *others]:
        started = time.monotonic()
        if manager.stop(name, timeout=timeouts.get(name, 30.0)):
            echo(f"• {name}: stopped in {time.monotonic() - started:.1f}s")
            stopped.append(name)
    if not stopped:
        echo("Nothing was running.")
    return stopped


def status(manager: ProcessManager, services: Sequence[ServiceSpec]) -> list[ServiceStatus]:
    """The status of every service."""
    return [manager.status(spec) for spec in services]


def format_table(statuses: Sequence[ServiceStatus]) -> str:
    """A plain-text table: service, state, pid, port, URL."""
    rows = [("SERVICE", "STATE", "PID", "PORT", "URL")]
    for item in statuses:
        state = "healthy" if item.healthy else ("starting/unhealthy" if item.running else "stopped")
        rows.append((item.name, state, str(item.pid or "-"), str(item.port or "-"), item.url or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)
