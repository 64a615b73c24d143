"""The training flow against the session's real Ray head and MLflow server, with a temporary Prefect server."""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from datasets import make_tiny_dataset
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler
from prefect.testing.utilities import prefect_test_harness

from flows.ray_job import RayJobFailed, _fresh_package, project_runtime_env, run_ray_job
from flows.training import FLOW_RUN_TAG, _prepare_cache_key, job_env, train_command, training_pipeline
from pawfinder.settings import Settings

STUB = """
import os, sys
print("stub args:", " ".join(sys.argv[1:]), flush=True)
print("stub home:", os.environ.get("PAWFINDER_HOME"), flush=True)
for n in range(3):
    print(f"progress {n}", flush=True)
if "--fail" in sys.argv:
    raise SystemExit("stub error: the dataset is on fire")
"""


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    """One temporary Prefect server (SQLite) for the flows of this module."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def tiny_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """Settings over a tiny dataset (4 breeds, 6 trainval + 2 test images each)."""
    data = make_tiny_dataset(tmp_path / "pets", per_breed=6, test_per_breed=2)
    monkeypatch.setenv("PAWFINDER_DATA_DIR", str(data))
    monkeypatch.setenv("PAWFINDER_WORKERS", "1")
    return Settings()


@pytest.fixture
def flow_env(
    monkeypatch: pytest.MonkeyPatch, tiny_data: Settings, mlflow_server: str, ray_instance: dict[str, str]
) -> Settings:
    """Settings of a flow run: tiny dataset, the session's MLflow and Ray, this interpreter for Ray jobs."""
    monkeypatch.setenv("PAWFINDER_MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("PAWFINDER_RAY_ADDRESS", ray_instance["dashboard"])
    monkeypatch.setenv("PAWFINDER_RAY_JOB_PYTHON", sys.executable)
    return Settings()


def _flow_logs(flow_run_id: UUID) -> list[str]:
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def test_ray_job_log_is_streamed_and_failure_carries_the_error(ray_instance: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "stub.py").write_text(STUB)
    runtime_env = {"working_dir": str(tmp_path / "code"), "env_vars": {"PAWFINDER_HOME": "/somewhere"}}
    lines: list[str] = []
    result = run_ray_job(
        ray_instance["dashboard"],
        f"{sys.executable} stub.py --epochs 2",
        runtime_env=runtime_env,
        log=lines.append,
        poll_interval=0.2,
    )
    assert "stub args: --epochs 2" in lines and "stub home: /somewhere" in lines
    assert [line for line in lines if line.startswith("progress")] == ["progress 0", "progress 1", "progress 2"]
    assert "progress 2" in result.logs
    lines.clear()
    with pytest.raises(RayJobFailed, match="FAILED") as failure:
        run_ray_job(
            ray_instance["dashboard"], f"{sys.executable} stub.py --fail", runtime_env=runtime_env, log=lines.append
        )
    assert "stub error: the dataset is on fire" in str(failure.value)
    assert "stub error: the dataset is on fire" in lines


def test_train_command_and_job_env_carry_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(home=tmp_path / "home", ray_job_python="/opt/py/bin/python")
    command = train_command(settings, profile="smoke", tag="abc", epochs=3, lr=0.01, extra_args=["--seed", "7"])
    assert command == (
        f"/opt/py/bin/python -m ray_jobs.train --profile smoke --run-tag {FLOW_RUN_TAG}=abc "
        "--epochs 3 --lr 0.01 --seed 7"
    )
    env = job_env(settings)
    assert env["PAWFINDER_HOME"] == str((tmp_path / "home").resolve())
    assert env["PAWFINDER_DATA_DIR"] == str((tmp_path / "home" / "data").resolve())
    assert env["MLFLOW_TRACKING_URI"] == settings.mlflow_tracking_uri
    for key, value in env.items():  # the job rebuilds exactly these settings from its environment
        monkeypatch.setenv(key, value)
    assert Settings().model_dump() == settings.model_dump()


def test_failing_training_job_fails_the_flow_with_its_error_in_the_log(prefect_api: None, flow_env: Settings) -> None:
    state = training_pipeline(profile="smoke", extra_args=["--no-such-flag"], return_state=True)
    assert state.is_failed()
    assert "RayJobFailed" in state.message and "FAILED" in state.message
    logs = "\n".join(_flow_logs(state.state_details.flow_run_id))
    assert "Submitted Ray job" in logs
    assert "No such option: --no-such-flag" in logs  # the job's own error text, streamed into the Prefect log
    assert MlflowClient(flow_env.mlflow_tracking_uri).search_registered_models(f"name = '{flow_env.model_name}'") == []


def test_training_pipeline_end_to_end_registers_evaluates_and_promotes(prefect_api: None, flow_env: Settings) -> None:
    state = training_pipeline(profile="smoke", epochs=1, lr=0.002, auto_promote=True, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    flow_run_id = state.state_details.flow_run_id
    client = MlflowClient(flow_env.mlflow_tracking_uri)

    run = client.get_run(result["training"]["run_id"])
    assert run.data.tags[FLOW_RUN_TAG] == str(flow_run_id)
    assert run.data.params["epochs"] == "1" and run.data.params["lr"] == "0.002"  # parameters reached the job
    version = result["training"]["version"]
    assert client.get_model_version_by_alias(flow_env.model_name, "champion").version == version
    tags = client.get_model_version(flow_env.model_name, version).tags
    assert tags[FLOW_RUN_TAG] == str(flow_run_id) and "test_top1" in tags
    assert result["metrics"]["n"] == 8 and 0 <= result["metrics"]["top1"] <= 1  # 4 breeds x 2 test images
    assert result["promotion"]["promoted"] and result["promotion"]["gate"] == "first_champion"

    logs = "\n".join(_flow_logs(flow_run_id))
    assert "Dataset present" in logs and "Running entrypoint for job" in logs
    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["training-report"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    assert len(artifacts) == 1
    assert f"/runs/{run.info.run_id}" in artifacts[0].data and "champion" in artifacts[0].data


def test_prepare_is_cached_only_while_manifest_and_folders_are_untouched(tiny_data: Settings) -> None:
    from pawfinder.data.prepare import prepare

    assert _prepare_cache_key(None, {"settings": tiny_data}) is None  # nothing prepared yet: never cached
    prepare(tiny_data)
    key = _prepare_cache_key(None, {"settings": tiny_data})
    assert key is not None and key == _prepare_cache_key(None, {"settings": tiny_data})
    (tiny_data.dataset_dir / "images" / "extra.jpg").write_bytes(b"")
    assert _prepare_cache_key(None, {"settings": tiny_data}) != key


def test_each_submission_uploads_a_fresh_package_without_local_state(tmp_path: Path) -> None:
    from ray._private.runtime_env.packaging import get_uri_for_package

    code = tmp_path / "code"
    (code / "ray_jobs").mkdir(parents=True)
    (code / "ray_jobs" / "train.py").write_text("print('train')\n")
    (code / ".venv").mkdir()
    (code / ".venv" / "huge.bin").write_bytes(b"0" * 1000)
    runtime_env = project_runtime_env({"A": "1"}, code)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = _fresh_package(runtime_env, tmp_path / "one")
    second = _fresh_package(runtime_env, tmp_path / "two")
    assert first["env_vars"] == {"A": "1"} and "excludes" not in first
    assert get_uri_for_package(Path(first["working_dir"])) != get_uri_for_package(Path(second["working_dir"]))
    with zipfile.ZipFile(first["working_dir"]) as archive:
        names = set(archive.namelist())
    assert "ray_jobs/train.py" in names and not any(name.startswith(".venv") for name in names)


def test_training_deployment_is_manual_unless_a_cron_is_set() -> None:
    from flows.deployments import deployments

    manual = deployments(Settings())[0]
    assert manual.name == "training-pipeline" and manual.schedules == []
    assert manual.entrypoint == "flows/training.py:training_pipeline"
    weekly = deployments(Settings(training_cron="0 3 * * 1"))[0]
    assert [schedule.schedule.cron for schedule in weekly.schedules] == ["0 3 * * 1"]
