"""Run one Ray job through the Job Submission API: submit, stream its log, and fail loudly with its error."""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Never upload local state, environments or data with the job's code (gitignore syntax, relative to working_dir).
WORKING_DIR_EXCLUDES = [".venv", ".pawfinder", "data", ".git", "**/__pycache__", ".pytest_cache", ".ruff_cache"]
LOG_TAIL_LINES = 40
AGENT_WAIT_S = 180.0
_logger = logging.getLogger(__name__)


class RayJobFailed(RuntimeError):
    """The Ray job ended in FAILED or STOPPED; the message carries Ray's reason and the end of the job's log."""


@dataclass(frozen=True)
class RayJobResult:
    """A job that finished successfully."""

    submission_id: str
    logs: str


def _fresh_package(runtime_env: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Zip a local working_dir into a package unique to this submission.

    Ray names packages by content and skips the upload when one of that name exists; but a package whose last job
    just ended is garbage-collected moments later, and the new job then fails to set up its actors (ray-project/ray
    #36703, #46625) — e.g. when a failed training is retried. A per-submission marker file makes every upload fresh.
    """
    working_dir = runtime_env.get("working_dir")
    if not working_dir or not Path(working_dir).is_dir():
        return runtime_env
    from ray._private.runtime_env.packaging import create_package

    package = folder / "working_dir.zip"
    create_package(str(working_dir), package, include_gitignore=True, excludes=runtime_env.get("excludes", []))
    with zipfile.ZipFile(package, "a") as archive:
        archive.writestr(".submission", uuid.uuid4().hex)
    fresh = {key: value for key, value in runtime_env.items() if key != "excludes"}
    return {**fresh, "working_dir": str(package)}


def _submit(client: Any, entrypoint: str, runtime_env: dict[str, Any], metadata: dict[str, str]) -> str:
    """Submit, waiting out the seconds after a head starts when no job agent is registered yet."""
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata)
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def project_runtime_env(env_vars: dict[str, str], working_dir: Path = PROJECT_ROOT) -> dict[str, Any]:
    """A runtime_env that ships the project's code (not its state or data) and the given environment variables."""
    return {"working_dir": str(working_dir), "excludes": WORKING_DIR_EXCLUDES, "env_vars": env_vars}


def run_ray_job(
    address: str,
    entrypoint: str,
    *,
    runtime_env: dict[str, Any],
    metadata: dict[str, str] | None = None,
    log: Callable[[str], None] = _logger.info,
    poll_interval: float = 2.0,
) -> RayJobResult:
    """Submit ``entrypoint`` to the Ray Jobs API at ``address`` and follow it to the end.

    Each new line of the job's log is passed to ``log`` as it appears (polling, so it works from any thread or event
    loop). Raises ``RayJobFailed`` with Ray's message and the log's last lines when the job fails or is stopped; if
    the caller is interrupted, the job is stopped rather than left running.
    """
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    from ray.job_submission import JobStatus, JobSubmissionClient

    # As Ray's own CLI does: send the local token (~/.ray/auth_token, RAY_AUTH_TOKEN) when RAY_AUTH_MODE is unset.
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    client = JobSubmissionClient(address)
    with tempfile.TemporaryDirectory(prefix="pawfinder-job-") as folder:
        submission_id = _submit(client, entrypoint, _fresh_package(runtime_env, Path(folder)), metadata or {})
    log(f"Submitted Ray job {submission_id} to {address}: {entrypoint}")
    emitted = 0
    logs = ""
    try:
        while True:
            info = client.get_job_info(submission_id)
            logs = client.get_job_logs(submission_id)
            complete = logs[: logs.rfind("\n") + 1] if not info.status.is_terminal() else logs
            for line in complete[emitted:].splitlines():
                log(line)
            emitted = len(complete)
            if info.status.is_terminal():
                break
            time.sleep(poll_interval)
    except BaseException:
        if not client.get_job_status(submission_id).is_terminal():
            client.stop_job(submission_id)
        raise
    if info.status != JobStatus.SUCCEEDED:
        tail = "\n".join(logs.splitlines()[-LOG_TAIL_LINES:])
        reason = (info.message or "no message").splitlines()[0]
        raise RayJobFailed(f"Ray job {submission_id} {info.status.value}: {reason}\n{tail}")
    log(f"Ray job {submission_id} succeeded")
    return RayJobResult(submission_id=submission_id, logs=logs)
