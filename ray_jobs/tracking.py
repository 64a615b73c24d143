"""MLflow tracking for training: one parent run per training, one child run per stage (logged by rank 0 only)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

_MAX_BATCH = 100


def experiment_id(client: MlflowClient, name: str) -> str:
    """Id of experiment ``name``, created if missing."""
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def git_commit() -> str | None:
    """The commit of the checked-out source, if it is a git work tree (``None`` e.g. in a Ray job's working dir)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, object]) -> None:
    """Log many parameters in batches (MLflow caps a batch at 100)."""
    items = [Param(key, str(value)[:6000]) for key, value in params.items()]
    for start in range(0, len(items), _MAX_BATCH):
        client.log_batch(run_id, params=items[start : start + _MAX_BATCH])


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log scalar metrics at ``step`` in one request."""
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), now, step) for key, value in metrics.items()])


class StageLogger:
    """Logs one training stage into a child run of the parent run; does nothing when ``client`` is ``None``.

    Construct it with :meth:`open` on every worker: only rank 0 gets a client, so only rank 0 logs.
    """

    def __init__(self, client: MlflowClient | None, run_id: str | None):
        self.client = client
        self.run_id = run_id

    @classmethod
    def open(
        cls, tracking_uri: str, parent_run_id: str, stage: str, *, resume_run_id: str | None, is_rank0: bool
    ) -> StageLogger:
        """The child run ``stage`` of ``parent_run_id`` (``resume_run_id`` continues one started before a failure)."""
        if not is_rank0:
            return cls(None, None)
        client = MlflowClient(tracking_uri)
        if resume_run_id:
            client.update_run(resume_run_id, status="RUNNING")
            return cls(client, resume_run_id)
        parent = client.get_run(parent_run_id)
        run = client.create_run(
            parent.info.experiment_id,
            run_name=f"{parent.info.run_name}/{stage}",
            tags={MLFLOW_PARENT_RUN_ID: parent_run_id, "stage": stage},
        )
        return cls(client, run.info.run_id)

    def metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.client and self.run_id:
            log_metrics(self.client, self.run_id, metrics, step)

    def params(self, params: Mapping[str, object]) -> None:
        if self.client and self.run_id:
            log_params(self.client, self.run_id, params)

    def tags(self, tags: Mapping[str, str]) -> None:
        if self.client and self.run_id:
            self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def finish(self) -> None:
        if self.client and self.run_id:
            self.client.set_terminated(self.run_id, status="FINISHED")
