"""First start of the stack: train and promote a model when the registry has no ``champion`` yet."""

from __future__ import annotations

import os
import subprocess
import sys

from pawfinder.settings import Settings
from pawfinder.stack.lifecycle import Echo
from pawfinder.stack.services import PROJECT_ROOT, stack_env


class BootstrapError(RuntimeError):
    """The bootstrap training run failed."""


def champion_version(settings: Settings) -> str | None:
    """The version of the registered model that holds alias ``champion``, or ``None``."""
    from pawfinder.registry import CHAMPION, registry_client, resolve

    version = resolve(settings.model_name, CHAMPION, client=registry_client(settings))
    return version.version if version else None


def ensure_champion(settings: Settings, *, echo: Echo, profile: str = "quick") -> str:
    """Return the champion version; without one, run the training pipeline (``profile``) with promotion first.

    The pipeline runs as a child process reporting to the stack's Prefect server, its log streamed to the terminal.
    """
    version = champion_version(settings)
    if version is not None:
        echo(f"• model: champion is {settings.model_name} v{version}")
        return version
    echo(f"• model: no champion yet — running the training pipeline (profile {profile!r}, auto-promote)…")
    command = [sys.executable, "-m", "flows.training", "--profile", profile, "--auto-promote"]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env={**os.environ, **stack_env(settings)}, check=False)
    if result.returncode != 0:
        raise BootstrapError(f"the training pipeline failed (exit {result.returncode}); see its log above.")
    version = champion_version(settings)
    if version is None:
        raise BootstrapError("the training pipeline finished but no champion was promoted; see its log above.")
    echo(f"• model: champion is {settings.model_name} v{version}")
    return version
