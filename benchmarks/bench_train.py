"""Benchmark the training recipe: wall time, test top-1 (overall and per variant), ECE, ONNX size.

    PAWFINDER_DATA_DIR=../shared/data/oxford-iiit-pet .venv/bin/python benchmarks/bench_train.py
    .venv/bin/python benchmarks/bench_train.py --backbone efficientnet_lite2 --json results.json
    .venv/bin/python benchmarks/bench_train.py --profile quick

Prepares the data cache if needed (timed apart), trains the profile with ``ray_jobs.train.run_training`` on a local
loopback Ray instance (the model registers as ``challenger``), then evaluates it on the test split through the
serving code path (and, when that model is int8, the run's float32 file too). MLflow: the server at
PAWFINDER_MLFLOW_TRACKING_URI if it answers, else a temporary one with its state under
``<PAWFINDER_HOME>/bench-mlflow``. Prints the machine and load with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import mlflow

from pawfinder.data.prepare import manifest_path, prepare
from pawfinder.evaluation import evaluate
from pawfinder.inference import OnnxClassifier
from pawfinder.settings import LOOPBACK, Settings
from ray_jobs.config import PROFILE_NAMES, load_config
from ray_jobs.train import run_training


def _answers(uri: str) -> bool:
    try:
        return httpx.get(f"{uri}/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def mlflow_tracking(settings: Settings) -> Iterator[Settings]:
    """``settings`` if its MLflow server answers, else settings pointing at a temporary local server."""
    if _answers(str(settings.mlflow_tracking_uri)):
        yield settings
        return
    root = (settings.home / "bench-mlflow").resolve()
    root.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]
    uri = f"http://{LOOPBACK}:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--host", LOOPBACK, "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art")]
    with (root / "server.log").open("a") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not _answers(uri):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the temporary MLflow server did not start; see {root / 'server.log'}")
            time.sleep(1)
        yield settings.model_copy(update={"mlflow_tracking_uri": uri})
    finally:
        server.terminate()
        server.wait(timeout=30)


def machine() -> dict[str, Any]:
    """Where the figures come from."""
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def float32_test(run_id: str, settings: Settings) -> dict[str, Any]:
    """Test top-1 overall and per variant of the run's float32 ONNX file (logged beside the served int8 one)."""
    folder = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="onnx-fp32", tracking_uri=str(settings.mlflow_tracking_uri)
    )
    classifier = OnnxClassifier.from_path(Path(folder) / "model.onnx")
    report = evaluate(classifier, settings.dataset_dir, "test", settings=settings).to_dict()
    return {"top1": report["top1"], "per_variant": report["per_variant"]}


def bench(settings: Settings, *, profile: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Prepare (if needed), train, register and evaluate on test; returns every figure."""
    result: dict[str, Any] = {"machine_before": machine(), "profile": profile, "overrides": overrides}
    if not manifest_path(settings).is_file():
        started = time.perf_counter()
        prepare(settings)
        result["prepare_seconds"] = time.perf_counter() - started
    config = load_config(profile, **overrides, evaluate_split="test")  # type: ignore[arg-type]
    with mlflow_tracking(settings) as tracked:
        started = time.perf_counter()
        summary = run_training(config, tracked)
        result["wall_seconds"] = time.perf_counter() - started
        if summary.get("quantized"):  # while the (maybe temporary) MLflow server still runs
            result["test_fp32"] = float32_test(summary["run_id"], tracked)
    evaluation = summary.pop("evaluation")
    result |= {"config": config.model_dump(mode="json"), "summary": summary, "test": evaluation}
    result["machine_after"] = machine()
    return result


def print_table(result: dict[str, Any]) -> None:
    summary, test = result["summary"], result["test"]
    lines = [
        f"machine: {result['machine_before']['cpus']} CPUs, load before {result['machine_before']['load_avg_1_5_15']}"
        f" after {result['machine_after']['load_avg_1_5_15']}",
        f"profile {result['profile']} backbone {result['config']['backbone']} overrides {result['overrides']}",
        f"wall time (train + package + register + test eval): {result['wall_seconds'] / 60:.1f} min"
        f" (training {summary['train_seconds'] / 60:.1f} min)",
        f"test top-1 {test['top1']:.4f}  top-5 {test['top5']:.4f}  ECE {test['ece']:.4f}  n={test['n']}",
        *(f"  {variant}: top-1 {v['top1']:.4f} (n={v['n']})" for variant, v in test["per_variant"].items()),
        f"val top-1 {summary['val_top1']:.4f}; ECE {summary['val_ece_before']:.4f} -> {summary['val_ece_after']:.4f}"
        f" (T={summary['temperature']:.3f}); OOD threshold {summary['ood_threshold']:.3f}",
        f"ONNX {summary['onnx_size_mb']:.1f} MB ({'int8' if summary.get('quantized') else 'float32'});"
        f" registered as version {summary.get('model_version')}",
    ]
    if "test_fp32" in result:
        fp32 = result["test_fp32"]
        lines.append(f"float32 file (onnx-fp32/): test top-1 {fp32['top1']:.4f}")
        lines.extend(f"  {variant}: top-1 {v['top1']:.4f} (n={v['n']})" for variant, v in fp32["per_variant"].items())
    print("\n".join(lines))


def parse_override(item: str) -> tuple[str, Any]:
    """``FIELD=JSON`` -> (field, value); a value that is not JSON is taken as a string."""
    field, sep, raw = item.partition("=")
    if not sep or not field:
        raise SystemExit(f"--set expects FIELD=VALUE, got {item!r}")
    try:
        return field, json.loads(raw)
    except json.JSONDecodeError:
        return field, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="full", choices=PROFILE_NAMES)
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="Override any TrainConfig field, e.g. --set ema_decay=0.998 --set 'train_sizes=[160,192]'.",
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write every figure to this file.")
    args = parser.parse_args()
    settings = Settings()
    overrides = {key: value for key, value in (("backbone", args.backbone), ("epochs", args.epochs)) if value}
    overrides |= dict(parse_override(item) for item in args.set)
    result = bench(settings, profile=args.profile, overrides=overrides)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
