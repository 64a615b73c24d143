"""Run one Ray job through the Job Submission API: submit, stream its log, and fail loudly with its error."""

from __future__ import annotations

import logging
import time
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
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    submission_id = _submit(client, entrypoint, runtime_env, metadata or {})
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
