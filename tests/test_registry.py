"""Registry aliases, the promotion gate and rollback against a real MLflow server, with real ONNX models."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import mlflow
import onnx
import pytest
from conftest import free_port
from datasets import make_tiny_dataset
from mlflow import MlflowClient
from typer.testing import CliRunner

from pawfinder.cli import app
from pawfinder.evaluation import evaluate_version
from pawfinder.registry import (
    CHALLENGER,
    CHAMPION,
    PromotionRefused,
    RegistryError,
    gate_metric,
    list_versions,
    promote,
    register,
    resolve,
    rollback,
)
from pawfinder.settings import Settings


@dataclass(frozen=True)
class Logged:
    """Model URIs as ``mlflow.onnx.log_model`` returns them, and their runs."""

    good: str
    good_run: str
    broken: str  # ONNX without PawFinder metadata: fails the smoke prediction
    broken_run: str


def _log(
    model: onnx.ModelProto, client: MlflowClient, experiment_id: str, metrics: dict[str, float]
) -> tuple[str, str]:
    """Log like the training job does. Only here is MLflow's process-wide tracking URI set: the code under test must
    work without it (MLflow resolves some URIs against it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
        with mlflow.start_run(experiment_id=experiment_id) as run:
            info = mlflow.onnx.log_model(model, name="model", save_as_external_data=False)
            mlflow.log_metrics(metrics)
    return info.model_uri, run.info.run_id


@pytest.fixture(scope="module")
def client(mlflow_server: str) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)


@pytest.fixture(scope="module")
def logged(client: MlflowClient, tiny_onnx_model: Path) -> Logged:
    experiment_id = client.create_experiment(f"registry-tests-{uuid.uuid4().hex[:8]}")
    good = onnx.load(tiny_onnx_model)
    broken = onnx.load(tiny_onnx_model)
    broken.ClearField("metadata_props")
    good_uri, good_run = _log(good, client, experiment_id, {})
    broken_uri, broken_run = _log(broken, client, experiment_id, {"test_top1": 0.42})
    return Logged(good_uri, good_run, broken_uri, broken_run)


@pytest.fixture
def name() -> str:
    return f"pawfinder-{uuid.uuid4().hex[:8]}"


def _register(logged: Logged, name: str, client: MlflowClient, top1: float | None) -> str:
    tags = {"test_top1": top1} if top1 is not None else {}
    return register(logged.good, name, tags, client=client).version


def _champion(name: str, client: MlflowClient) -> str | None:
    version = resolve(name, CHAMPION, client=client)
    return version.version if version else None


def test_register_points_challenger_at_the_new_version(logged: Logged, client: MlflowClient, name: str) -> None:
    first = register(logged.good, name, {"test_top1": 0.9, "data_manifest": "abc"}, client=client)
    second = register(logged.good, name, {"test_top1": 0.8}, client=client)
    assert (first.version, second.version) == ("1", "2")
    assert second.aliases == [CHALLENGER]
    assert first.tags == {"test_top1": "0.9", "data_manifest": "abc"}
    assert first.run_id == logged.good_run
    assert resolve(name, CHALLENGER, client=client).version == "2"
    assert resolve(name, CHAMPION, client=client) is None
    assert resolve("no-such-model", CHAMPION, client=client) is None
    assert [(v.version, v.aliases) for v in list_versions(name, client=client)] == [("2", [CHALLENGER]), ("1", [])]
    assert list_versions("no-such-model", client=client) == []


def test_first_promotion_needs_no_comparison(logged: Logged, client: MlflowClient, name: str) -> None:
    _register(logged, name, client, None)
    result = promote(name, client=client, user="tester")
    assert (result.version, result.gate, result.previous_champion) == ("1", "first_champion", None)
    version = client.get_model_version(name, "1")
    assert version.aliases == [CHAMPION]  # challenger moved on: it is the champion now
    assert version.tags["promoted_by"] == "tester"
    assert datetime.fromisoformat(version.tags["promoted_at"]).utcoffset().total_seconds() == 0
    assert version.tags["promotion_reason"] == "first champion"
    assert "previous_champion" not in version.tags
    with pytest.raises(RegistryError, match="already the champion"):
        promote(name, "1", client=client)


def test_gate_force_and_rollback(logged: Logged, client: MlflowClient, name: str) -> None:
    _register(logged, name, client, 0.90)
    promote(name, "1", client=client)
    _register(logged, name, client, 0.80)
    with pytest.raises(PromotionRefused, match=r"0\.8000, worse than champion version 1 \(0\.9000\)"):
        promote(name, client=client)
    assert _champion(name, client) == "1"
    with pytest.raises(RegistryError, match="needs --reason"):
        promote(name, client=client, force=True)

    forced = promote(name, client=client, force=True, reason="hotfix for a bad label")
    assert (forced.version, forced.gate, forced.previous_champion) == ("2", "forced", "1")
    assert client.get_model_version(name, "2").tags["promotion_reason"] == "hotfix for a bad label"

    _register(logged, name, client, 0.796)  # within the 0.005 tolerance of 0.80
    passed = promote(name, "3", client=client)
    assert (passed.gate, passed.candidate_top1, passed.champion_top1) == ("passed", 0.796, 0.80)

    back = rollback(name, client=client, reason="latency regression", user="oncall")
    assert (back.restored, back.demoted) == ("2", "3")
    assert _champion(name, client) == "2"
    assert client.get_model_version(name, "3").tags["rollback_reason"] == "latency regression"
    assert client.get_model_version(name, "2").tags["promotion_reason"].startswith("rollback from version 3")
    assert rollback(name, client=client).restored == "1"
    with pytest.raises(RegistryError, match="no previous champion recorded"):
        rollback(name, client=client)
    assert _champion(name, client) == "1"


def test_rollback_without_champion_says_what_to_do(client: MlflowClient, name: str) -> None:
    with pytest.raises(RegistryError, match="pawfinder promote VERSION"):
        rollback(name, client=client)


def test_smoke_prediction_blocks_even_a_forced_promotion(logged: Logged, client: MlflowClient, name: str) -> None:
    version = register(logged.broken, name, client=client)
    assert gate_metric(version, client=client) == 0.42  # from the source run's metrics
    with pytest.raises(PromotionRefused, match=r"smoke prediction .* failed"):
        promote(name, client=client, force=True, reason="try anyway")
    assert _champion(name, client) is None


def test_missing_metric_is_computed_by_the_evaluator(
    client: MlflowClient, tiny_onnx_model: Path, tmp_path: Path, name: str
) -> None:
    experiment_id = client.create_experiment(f"evaluator-{name}")
    uri, run_id = _log(onnx.load(tiny_onnx_model), client, experiment_id, {})
    register(uri, name, {"test_top1": 0.0}, client=client)
    promote(name, client=client)
    register(uri, name, client=client)
    with pytest.raises(PromotionRefused, match="has no test_top1 recorded"):
        promote(name, client=client)

    dataset = make_tiny_dataset(tmp_path / "pets", breeds=("Abyssinian", "pug"), per_breed=1, test_per_breed=2)
    settings = Settings()
    result = promote(
        name,
        client=client,
        evaluator=lambda n, v: evaluate_version(n, v, client=client, data_dir=dataset, settings=settings).top1,
    )
    assert result.version == "2" and result.gate == "passed"
    tags = client.get_model_version(name, "2").tags
    assert float(tags["test_top1"]) == pytest.approx(result.candidate_top1)
    assert tags["test_n"] == "4"
    assert client.get_run(run_id).data.metrics["test_top1"] == pytest.approx(result.candidate_top1)


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, mlflow_server: str, name: str, tmp_path: Path) -> None:
    monkeypatch.setenv("PAWFINDER_MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("PAWFINDER_MODEL_NAME", name)
    monkeypatch.setenv("PAWFINDER_DATA_DIR", str(tmp_path / "no-data"))


@pytest.mark.usefixtures("cli_env")
def test_cli_promote_rollback_list_and_evaluate(
    logged: Logged, client: MlflowClient, name: str, tmp_path: Path
) -> None:
    runner = CliRunner()
    _register(logged, name, client, 0.9)
    _register(logged, name, client, 0.8)

    assert runner.invoke(app, ["promote", "1"]).exit_code == 0
    refused = runner.invoke(app, ["promote"])
    assert refused.exit_code == 1
    assert "worse than champion" in refused.stderr and "--force --reason" in refused.stderr
    forced = runner.invoke(app, ["promote", "--force", "--reason", "hotfix"])
    assert forced.exit_code == 0, forced.output
    assert "version 2 of" in forced.stdout and "was version 1" in forced.stdout

    listed = json.loads(runner.invoke(app, ["registry", "list", "--json"]).stdout)
    assert [(row["version"], row["aliases"], row["test_top1"]) for row in listed] == [
        ("2", [CHAMPION], 0.8),
        ("1", [], 0.9),
    ]
    table = runner.invoke(app, ["registry", "list"])
    assert table.exit_code == 0 and "champion" in table.stdout

    assert runner.invoke(app, ["rollback", "--reason", "regression"]).exit_code == 0
    assert _champion(name, client) == "1"

    dataset = make_tiny_dataset(tmp_path / "pets", breeds=("Bengal", "boxer"), per_breed=1, test_per_breed=2)
    evaluated = runner.invoke(
        app,
        [
            "evaluate",
            "--model-uri",
            f"models:/{name}@champion",
            "--data-dir",
            str(dataset),
            "--json",
            "--log-to-mlflow",
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert list(report) == ["top1", "top5", "n", "ece", "macro_f1", "per_breed", "per_variant", "model"]
    assert report["model"] == {"name": name, "version": "1"}
    assert float(client.get_model_version(name, "1").tags["test_top1"]) == pytest.approx(report["top1"])


def test_cli_errors_say_what_to_do(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    runner = CliRunner()
    monkeypatch.setenv("PAWFINDER_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    down = runner.invoke(app, ["rollback"])
    assert down.exit_code == 1 and "pawfinder stack up" in down.stderr
    missing = runner.invoke(app, ["evaluate", "--model-uri", "models:/nope@champion"])
    assert missing.exit_code == 1 and "not reachable" in missing.stderr


@pytest.mark.usefixtures("cli_env")
def test_cli_unknown_version_and_alias(logged: Logged, client: MlflowClient, name: str) -> None:
    runner = CliRunner()
    unknown = runner.invoke(app, ["promote", "7"])
    assert unknown.exit_code == 1 and "pawfinder registry list" in unknown.stderr
    no_challenger = runner.invoke(app, ["promote"])
    assert no_challenger.exit_code == 1 and "no 'challenger' version" in no_challenger.stderr
    no_champion = runner.invoke(app, ["evaluate", "--model-uri", f"models:/{name}@champion", "--json"])
    assert no_champion.exit_code == 1 and "pawfinder registry list" in no_champion.stderr


@pytest.mark.usefixtures("cli_env")
def test_cli_evaluate_a_local_file_logs_a_new_evaluation_run(
    client: MlflowClient, tiny_onnx_model: Path, tmp_path: Path
) -> None:
    dataset = make_tiny_dataset(tmp_path / "pets", breeds=("Bengal", "boxer"), per_breed=1, test_per_breed=2)
    args = ["evaluate", "--model-uri", str(tiny_onnx_model), "--data-dir", str(dataset), "--json", "--log-to-mlflow"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_id = result.stderr.strip().rsplit(" ", 1)[-1]
    run = client.get_run(run_id)
    assert run.data.metrics["test_top1"] == pytest.approx(json.loads(result.stdout)["top1"])
    assert run.data.metrics["test_n"] == 4 and "test_top1_original" in run.data.metrics
    assert run.data.tags["model_uri"] == str(tiny_onnx_model.resolve())
    assert "evaluation/test.json" in [a.path for a in client.list_artifacts(run_id, "evaluation")]
