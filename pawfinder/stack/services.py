"""The services of the local PawFinder stack, in start order, all bound to the loopback address."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pawfinder.settings import Settings
from pawfinder.stack.processes import ServiceSpec, http_ok
from pawfinder.stack.serve_ingress import serve_ingress_env

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TRAINING_DEPLOYMENT = "training-pipeline/training-pipeline"


def venv_script(name: str) -> str:
    """The console script ``name`` installed next to this interpreter (the project's virtualenv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"`{name}` is not installed; run `make install`.")
    return found


def prefect_api_url(settings: Settings) -> str:
    """The API URL of the stack's Prefect server."""
    return f"http://{settings.host}:{settings.prefect_port}/api"


def ray_temp_dir(settings: Settings) -> Path:
    """A short Ray temp dir of our own (Ray's socket paths must stay under 108 characters), one per home."""
    digest = hashlib.sha256(str(settings.home.resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"pawfinder-ray-{digest}"


def ray_num_cpus(settings: Settings) -> int:
    """Logical CPUs of the stack's Ray head: the machine's plus what the Serve replicas reserve, so that a training
    job submitted while the API is up can still get every core (the replicas mostly wait for requests)."""
    return (os.cpu_count() or 1) + math.ceil(settings.serve_model_cpus * settings.serve_model_replicas)


def stack_env(settings: Settings) -> dict[str, str]:
    """Environment shared by every service and by the bootstrap training run: absolute paths, service URLs."""
    home = settings.home.resolve()
    return {
        "PAWFINDER_HOME": str(home),
        "PAWFINDER_DATA_DIR": str(settings.dataset_dir.resolve()),
        "PAWFINDER_CACHE_DIR": str(settings.prepared_dir.resolve()),
        "PAWFINDER_MLFLOW_TRACKING_URI": str(settings.mlflow_tracking_uri),
        "PAWFINDER_RAY_ADDRESS": str(settings.ray_address),
        "MLFLOW_TRACKING_URI": str(settings.mlflow_tracking_uri),
        "PREFECT_API_URL": prefect_api_url(settings),
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        # Lets every process of the stack, Ray's own workers included, find this cluster even when other Ray
        # instances run on the machine ("auto" discovery refuses to choose between several).
        "RAY_ADDRESS": f"{settings.host}:{settings.ray_port}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        **serve_ingress_env(settings),
    }


def stack_services(settings: Settings) -> list[ServiceSpec]:
    """Every service ``pawfinder stack up`` manages, in start order (``down`` stops them in reverse)."""
    home = settings.home.resolve()
    env = stack_env(settings)
    host = settings.host
    python = sys.executable
    mlflow_url = f"http://{host}:{settings.mlflow_port}"
    prefect_url = f"http://{host}:{settings.prefect_port}"
    dashboard_url = f"http://{host}:{settings.ray_dashboard_port}"
    services = [
        ServiceSpec(
            name="mlflow",
            command=[
                python, "-m", "mlflow", "server", "--host", host, "--port", str(settings.mlflow_port),
                "--workers", "1",
                "--backend-store-uri", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
                "--artifacts-destination", str(home / "mlflow" / "artifacts"),
            ],
            url=mlflow_url,
            host=host,
            port=settings.mlflow_port,
            health=lambda: http_ok(f"{mlflow_url}/health"),
            env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no GenAI job workers on 2 cores
        ),
        ServiceSpec(
            name="prefect",
            command=[python, "-m", "prefect", "server", "start", "--host", host, "--port", str(settings.prefect_port)],
            url=prefect_url,
            host=host,
            port=settings.prefect_port,
            health=lambda: http_ok(f"{prefect_url}/api/health"),
            env=env,
        ),
        ServiceSpec(
            name="ray",
            command=[
                venv_script("ray"), "start", "--head", "--block",
                "--node-ip-address", host, "--port", str(settings.ray_port),
                "--dashboard-host", host, "--dashboard-port", str(settings.ray_dashboard_port),
                "--temp-dir", str(ray_temp_dir(settings)), "--disable-usage-stats",
                "--num-cpus", str(ray_num_cpus(settings)),
                # 0 = any free port: the fixed default (52365) collides with other Ray instances on the machine.
                "--dashboard-agent-listen-port", "0",
            ],
            url=dashboard_url,
            host=host,
            port=settings.ray_dashboard_port,
            health=lambda: http_ok(f"{dashboard_url}/api/gcs_healthz"),
            env=env,
            stop_timeout=10.0,  # `ray start --block` outlives SIGTERM; the group then gets SIGKILL, as `ray stop` does
        ),
        ServiceSpec(
            name="deployments",
            command=[python, "-m", "flows.deployments"],
            url=f"{prefect_url}/deployments",
            health=lambda: http_ok(f"{prefect_url}/api/deployments/name/{TRAINING_DEPLOYMENT}"),
            env=env,
            cwd=PROJECT_ROOT,
        ),
    ]  # fmt: skip
    if (PROJECT_ROOT / "serve" / "config.yaml").exists():
        serve_url = f"http://{host}:{settings.serve_port}"
        services.append(
            ServiceSpec(
                name="serve",
                command=[venv_script("pawfinder"), "serve"],
                url=f"{serve_url}/docs",
                host=host,
                port=settings.serve_port,
                health=lambda: http_ok(f"{serve_url}/readyz"),
                env=env,
                cwd=PROJECT_ROOT,
                startup_timeout=300.0,
                needs_model=True,
            )
        )
    if (PROJECT_ROOT / "console" / "app.py").exists():
        console_url = f"http://{host}:{settings.console_port}"
        services.append(
            ServiceSpec(
                name="console",
                command=[
                    python, "-m", "streamlit", "run", str(PROJECT_ROOT / "console" / "app.py"),
                    "--server.address", host, "--server.port", str(settings.console_port),
                    "--server.headless", "true", "--browser.gatherUsageStats", "false",
                ],
                url=console_url,
                host=host,
                port=settings.console_port,
                health=lambda: http_ok(f"{console_url}/_stcore/health"),
                env=env,
                cwd=PROJECT_ROOT,
                needs_model=True,
            )
        )  # fmt: skip
    return services
