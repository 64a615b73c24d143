"""Ray Tune search over the real TorchTrainer on a tiny generated dataset: trials run, are logged, nothing registers."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import make_tiny_dataset
from mlflow import MlflowClient

from pawfinder.data.prepare import prepare
from pawfinder.settings import Settings
from ray_jobs.config import load_config
from ray_jobs.tune import METRIC, run_search

pytestmark = pytest.mark.slow


def test_search_runs_trials_as_child_runs_and_returns_the_best(
    ray_instance: dict[str, str], mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_tiny_dataset(tmp_path / "pets", breeds=("Abyssinian", "pug"), per_breed=6, test_per_breed=1)
    monkeypatch.setenv("PAWFINDER_DATA_DIR", str(root))
    monkeypatch.setenv("PAWFINDER_MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("PAWFINDER_WORKERS", "1")
    settings = Settings()
    prepare(settings)
    config = load_config("smoke", head_epochs=2, experiment="test-tune")

    summary = run_search(config, settings, samples=2, lr_range=(1e-4, 1e-3), epoch_choices=(1,))

    assert 1e-4 <= summary["best_config"]["lr"] <= 1e-3
    assert summary["best_config"]["epochs"] == 1
    assert 0.0 <= summary[METRIC] <= 1.0
    client = MlflowClient(mlflow_server)
    parent = client.get_run(summary["run_id"])
    assert parent.info.status == "FINISHED"
    trials = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{summary['run_id']}'"
    )
    assert len(trials) == 2
    assert all(run.info.status == "FINISHED" and METRIC in run.data.metrics for run in trials)
    assert all(run.data.params["register_model"] == "false" for run in trials)
