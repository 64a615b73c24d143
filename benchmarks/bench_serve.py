"""Load test of the PawFinder API against a naive baseline, with real photos, on 127.0.0.1 only.

    .venv/bin/python benchmarks/bench_serve.py                      # the registry's champion (PAWFINDER_MLFLOW_*)
    .venv/bin/python benchmarks/bench_serve.py --random-model       # no champion yet: lite0 with a random head
    .venv/bin/python benchmarks/bench_serve.py --onnx m.onnx --weights state_dict.pt

1. Starts the Ray Serve app (private loopback Ray instance, its own PAWFINDER_HOME) serving the model and drives
   ``POST /predict`` with photos of the test split from PAWFINDER_DATA_DIR at each concurrency (async httpx).
2. Stops it, starts the baseline (plain FastAPI + PyTorch eager model of the same weights, one image per request,
   the project's decoder and torchvision eval transform) in a subprocess and drives it the same way.
3. Prints p50/p95/p99 latency, images/s, errors and the throughput ratio serve/baseline per concurrency; ``--json``
   writes the same figures to a file. ``--accuracy`` also compares top-1 through the API with ``evaluate()``.

The champion's PyTorch weights are the ``pytorch/state_dict.pt`` artifact of its training run. This script imports
torch for the baseline only; the service itself never does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from fastapi import File, UploadFile  # module level: the baseline's endpoint annotations must resolve

from pawfinder.settings import LOOPBACK, Settings
from pawfinder.stack.serve_ingress import serve_ingress_env

BASELINE_ROUTE = "/predict"


@dataclass
class LevelResult:
    system: str
    concurrency: int
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    images_per_s: float
    server_cpu_ms_per_image: float  # CPU time of every server process / answered images: load-independent cost


@dataclass
class ModelFiles:
    onnx: Path
    weights: Path | None
    follow_registry: bool  # serve through the registry alias instead of pinning the file


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _cpu_seconds(root_pid: int) -> float:
    """User + system CPU seconds of the descendants of ``root_pid`` (and the process itself unless it is us)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process just exited
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        times[pid] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = set(), {root_pid}
    while frontier:
        tree |= frontier
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - tree
    if root_pid == os.getpid():
        tree.discard(root_pid)
    return sum(times.get(pid, 0.0) for pid in tree)


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def load_photos(settings: Settings, limit: int, *, min_side: int = 0) -> list[tuple[str, bytes]]:
    """Up to ``limit`` (label, JPEG bytes) of the test split listed in ``annotations/test.txt``, keeping photos whose
    short side is at least ``min_side`` (the dataset copy here is mostly 256 x 256 squashed copies; the originals
    are typically 500 x 375)."""
    from PIL import Image

    from pawfinder.breeds import label_from_image_name

    root = settings.dataset_dir
    listing = root / "annotations" / "test.txt"
    if not listing.exists():
        sys.exit(f"no dataset at {root} (missing {listing}); set PAWFINDER_DATA_DIR")
    photos = []
    for line in listing.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        stem = line.split()[0]
        path = root / "images" / f"{stem}.jpg"
        if path.exists():
            with Image.open(path) as image:
                if min(image.size) < min_side:
                    continue
            photos.append((label_from_image_name(stem), path.read_bytes()))
        if len(photos) >= limit:
            break
    return photos


async def drive(
    url: str, photos: list[tuple[str, bytes]], concurrency: int, requests: int, system: str, server_pid: int
) -> LevelResult:
    """Send ``requests`` uploads with ``concurrency`` clients in flight; latency per request, throughput overall,
    and the CPU time the server processes (the tree under ``server_pid``, without this process) spent."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            for index in counter:
                _, data = photos[index % len(photos)]
                start = time.perf_counter()
                try:
                    response = await client.post(url, files={"file": ("photo.jpg", data, "image/jpeg")})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - start) * 1000)
                errors += not ok

        cpu_before, started = _cpu_seconds(server_pid), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, _cpu_seconds(server_pid) - cpu_before
    ordered = sorted(latencies)
    return LevelResult(
        system=system,
        concurrency=concurrency,
        requests=requests,
        errors=errors,
        p50_ms=round(_percentile(ordered, 0.50), 1),
        p95_ms=round(_percentile(ordered, 0.95), 1),
        p99_ms=round(_percentile(ordered, 0.99), 1),
        images_per_s=round((requests - errors) / elapsed, 1),
        server_cpu_ms_per_image=round(1000 * cpu / max(requests - errors, 1), 1),
    )


async def api_accuracy(url: str, photos: list[tuple[str, bytes]], concurrency: int = 16) -> tuple[float, int]:
    """Top-1 accuracy of ``POST /predict`` answers on ``photos``; (accuracy, answered)."""
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(label: str, data: bytes) -> bool | None:
            async with semaphore:
                response = await client.post(url, files={"file": ("photo.jpg", data)})
            return response.json()["label"] == label if response.status_code == 200 else None

        answers = await asyncio.gather(*(one(label, data) for label, data in photos))
    scored = [answer for answer in answers if answer is not None]
    return sum(scored) / max(len(scored), 1), len(scored)


def run_levels(url: str, photos, levels: list[int], requests: list[int], system: str, server_pid: int):
    asyncio.run(drive(url, photos, min(levels), 20, system, server_pid))  # warm-up: sessions, caches, connections
    results = []
    for concurrency, count in zip(levels, requests, strict=True):
        result = asyncio.run(drive(url, photos, concurrency, count, system, server_pid))
        print(json.dumps(asdict(result)), flush=True)
        results.append(result)
    return results


def serve_phase(args: argparse.Namespace, settings: Settings, files: ModelFiles, photos, home: Path):
    """Start the real Serve app on a private loopback Ray, measure, stop it."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.update(serve_ingress_env(settings))
    import ray
    from ray import serve

    from serve.app import pawfinder_app, start_serve

    port = _free_port()
    overrides = {"home": home, "serve_port": port, "host": LOOPBACK}
    if not files.follow_registry:
        overrides["serve_model_path"] = files.onnx
    serve_settings = settings.model_copy(update=overrides)
    ray.init(
        _node_ip_address=LOOPBACK,
        include_dashboard=False,
        _temp_dir=tempfile.mkdtemp(prefix="pfbench-", dir="/tmp"),
        log_to_driver=False,
        logging_level="warning",
    )
    try:
        start_serve(serve_settings)
        serve.run(pawfinder_app(serve_settings), name="pawfinder", route_prefix="/")
        base = f"http://{LOOPBACK}:{port}"
        _wait_ready(f"{base}/readyz")
        print("serving", httpx.get(f"{base}/readyz").json()["model"], flush=True)
        results = run_levels(f"{base}/predict", photos, args.levels, args.requests_per_level, "serve", os.getpid())
        accuracy = None
        if args.accuracy:
            accuracy = asyncio.run(api_accuracy(f"{base}/predict", load_photos(settings, limit=sys.maxsize)))
    finally:
        serve.shutdown()
        ray.shutdown()
    return results, accuracy


def baseline_phase(args: argparse.Namespace, files: ModelFiles, photos) -> list[LevelResult]:
    """Run the naive FastAPI + PyTorch server in a subprocess and measure it the same way."""
    port = _free_port()
    command = [sys.executable, __file__, "baseline-server", "--onnx", str(files.onnx), "--port", str(port)]
    if files.weights is not None:
        command += ["--weights", str(files.weights)]
    server = subprocess.Popen(command)
    try:
        _wait_ready(f"http://{LOOPBACK}:{port}/healthz", timeout=300)
        counts = [min(count, args.baseline_requests) for count in args.requests_per_level]
        url = f"http://{LOOPBACK}:{port}{BASELINE_ROUTE}"
        return run_levels(url, photos, args.levels, counts, "baseline", server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_ready(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    sys.exit(f"{url} was not ready within {timeout:.0f}s")


def model_files(args: argparse.Namespace, settings: Settings, scratch: Path) -> ModelFiles:
    """The ONNX file and PyTorch weights to compare, per the command line."""
    if args.onnx:
        return ModelFiles(Path(args.onnx), Path(args.weights) if args.weights else None, follow_registry=False)
    if args.random_model:
        import torch

        from pawfinder.models.backbones import build_model
        from pawfinder.models.onnx_export import export_onnx, metadata_for

        model = build_model(settings.backbone, pretrained=True)
        onnx_path = export_onnx(model, scratch / "model.onnx", metadata_for(model, settings.model_name))
        torch.save(model.state_dict(), scratch / "state_dict.pt")
        return ModelFiles(onnx_path, scratch / "state_dict.pt", follow_registry=False)
    return _champion_files(settings, scratch)


def _champion_files(settings: Settings, scratch: Path) -> ModelFiles:
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    from pawfinder.inference import find_onnx_file

    uri = settings.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        version = client.get_model_version_by_alias(settings.model_name, settings.serve_model_alias)
    except Exception as err:  # unreachable server, unknown model or alias
        sys.exit(f"no {settings.model_name}@{settings.serve_model_alias} at {uri} ({err}); try --random-model")
    folder = download_artifacts(
        client.get_model_version_download_uri(version.name, version.version), dst_path=str(scratch), tracking_uri=uri
    )
    weights = None
    if version.run_id:
        try:
            weights = Path(
                download_artifacts(
                    run_id=version.run_id,
                    artifact_path="pytorch/state_dict.pt",
                    dst_path=str(scratch),
                    tracking_uri=uri,
                )
            )
        except Exception as err:  # older runs did not log their weights
            print(f"no PyTorch weights in run {version.run_id} ({err}); the baseline is skipped", file=sys.stderr)
    print(f"champion: {version.name} version {version.version}", flush=True)
    return ModelFiles(find_onnx_file(Path(folder)), weights, follow_registry=True)


def baseline_server(onnx: Path, weights: Path | None, port: int) -> None:
    """Plain FastAPI + PyTorch eager: one image per request, no batching, no ONNX Runtime."""
    import torch
    import uvicorn
    from fastapi import FastAPI

    from pawfinder.breeds import by_label
    from pawfinder.data.images import decode_image
    from pawfinder.inference import OnnxClassifier
    from pawfinder.models.backbones import build_model
    from pawfinder.preprocessing.torch_ops import eval_transform

    settings = Settings()
    metadata = OnnxClassifier.from_path(onnx).metadata
    model = build_model(metadata.backbone, num_classes=len(metadata.labels), pretrained=weights is None)
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    torch.set_num_threads(os.cpu_count() or 1)
    transform = eval_transform(metadata.preprocessing)
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(BASELINE_ROUTE)
    def predict(file: UploadFile = File(...)) -> dict[str, object]:  # noqa: B008
        image = decode_image(file.file.read(), max_pixels=settings.max_image_pixels).image
        with torch.inference_mode():
            logits = model(transform(image).unsqueeze(0))[0]
        probs = torch.softmax(logits / metadata.temperature, dim=0)
        index = int(probs.argmax())
        label = metadata.labels[index]
        return {"label": label, "breed": by_label(label).name, "confidence": float(probs[index])}

    uvicorn.run(app, host=LOOPBACK, port=port, log_level="warning")


def _print_table(results: list[LevelResult], baseline: list[LevelResult]) -> None:
    by_level = {r.concurrency: r for r in baseline}
    columns = ("system", "conc", "reqs", "errors", "p50 ms", "p95 ms", "p99 ms", "img/s", "server CPU ms/img")
    print()
    print(" ".join(f"{name:>8}" for name in columns))
    for row in [*results, *baseline]:
        values = (row.system, row.concurrency, row.requests, row.errors, row.p50_ms, row.p95_ms, row.p99_ms,
                  row.images_per_s, row.server_cpu_ms_per_image)  # fmt: skip
        print(" ".join(f"{value:>8}" for value in values))
    for row in results:
        if row.concurrency in by_level and by_level[row.concurrency].images_per_s:
            ratio = row.images_per_s / by_level[row.concurrency].images_per_s
            print(f"concurrency {row.concurrency:>2}: serve / baseline throughput = {ratio:.2f}x")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    server = sub.add_parser("baseline-server", help="(internal) run the naive baseline server")
    server.add_argument("--onnx", required=True)
    server.add_argument("--weights")
    server.add_argument("--port", type=int, required=True)
    parser.add_argument("--onnx", help="Serve this ONNX file (pinned) instead of the champion.")
    parser.add_argument("--weights", help="PyTorch state_dict of the same model, for the baseline.")
    parser.add_argument("--random-model", action="store_true", help="Export settings.backbone with a random head.")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 32])
    parser.add_argument("--requests", type=int, default=400, help="Requests per concurrency level.")
    parser.add_argument("--final-requests", type=int, default=2000, help="Requests at the highest concurrency.")
    parser.add_argument("--baseline-requests", type=int, default=200, help="Cap per level for the slow baseline.")
    parser.add_argument("--photos", type=int, default=400, help="Distinct test photos to cycle through.")
    parser.add_argument(
        "--min-side", type=int, default=300, help="Only photos with a short side >= this (0: all, mostly 256^2)."
    )
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--accuracy", action="store_true", help="Top-1 through the API vs evaluate() on the photos.")
    parser.add_argument("--json", type=Path, help="Also write the results to this file.")
    args = parser.parse_args()
    if args.command == "baseline-server":
        baseline_server(Path(args.onnx), Path(args.weights) if args.weights else None, args.port)
        return

    settings = Settings()
    args.requests_per_level = [args.requests] * (len(args.levels) - 1) + [args.final_requests]
    photos = load_photos(settings, args.photos, min_side=args.min_side)
    print(f"{len(photos)} photos from {settings.dataset_dir}", flush=True)
    with tempfile.TemporaryDirectory(prefix="pawfinder-bench-") as scratch:
        files = model_files(args, settings, Path(scratch))
        results, accuracy = serve_phase(args, settings, files, photos, Path(scratch) / "home")
        baseline = [] if args.no_baseline or files.weights is None else baseline_phase(args, files, photos)
        report: dict[str, object] = {"serve": [asdict(r) for r in results], "baseline": [asdict(r) for r in baseline]}
        if accuracy is not None:
            report["accuracy"] = _accuracy_report(accuracy, files.onnx, settings)
    _print_table(results, baseline)
    if "accuracy" in report:
        print("accuracy:", json.dumps(report["accuracy"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def _accuracy_report(accuracy: tuple[float, int], onnx: Path, settings: Settings) -> dict[str, float]:
    """Top-1 through the API next to ``pawfinder.evaluation.evaluate`` of the same file on the test split."""
    from pawfinder.evaluation import evaluate
    from pawfinder.inference import OnnxClassifier

    report = evaluate(OnnxClassifier.from_path(onnx), settings.dataset_dir, "test", settings=settings)
    api_top1, answered = accuracy
    return {
        "api_top1": round(api_top1, 4),
        "api_answered": answered,
        "evaluate_top1": round(report.top1, 4),
        "evaluate_n": report.n,
        "difference_points": round(100 * (api_top1 - report.top1), 2),
    }


if __name__ == "__main__":
    main()
