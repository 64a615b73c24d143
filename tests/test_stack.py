"""The stack process manager with stub services: up starts, status reports, up reuses, down stops exactly ours."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port
from typer.testing import CliRunner

from pawfinder.cli import app
from pawfinder.settings import Settings
from pawfinder.stack import lifecycle
from pawfinder.stack.processes import ProcessManager, ServiceError, ServiceSpec, http_ok
from pawfinder.stack.serve_ingress import bind_to_host, serve_ingress_env
from pawfinder.stack.services import stack_services

# A service with two children: one in its process group, one in a session of its own (as Ray's workers are).
SPAWNER = """
import subprocess, sys, time
sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
subprocess.Popen(sleeper)
subprocess.Popen(sleeper, start_new_session=True)
time.sleep(300)
"""


def _http_service(name: str, port: int, tmp_path: Path, **kwargs) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        command=[sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        url=f"http://127.0.0.1:{port}",
        port=port,
        health=lambda: http_ok(f"http://127.0.0.1:{port}/"),
        startup_timeout=30,
        stop_timeout=5,
        **kwargs,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return children


@pytest.fixture
def manager(tmp_path: Path) -> ProcessManager:
    return ProcessManager(run_dir=tmp_path / "run", log_dir=tmp_path / "logs")


def test_up_status_reuse_down_stops_exactly_ours(manager: ProcessManager, tmp_path: Path) -> None:
    web_a, web_b = free_port(), free_port()
    services = [
        _http_service("web-a", web_a, tmp_path),
        ServiceSpec(name="spawner", command=[sys.executable, "-c", SPAWNER], stop_timeout=5),
        _http_service("web-b", web_b, tmp_path, needs_model=True),
    ]
    calls: list[str] = []
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        statuses = lifecycle.up(manager, services, echo=calls.append, ensure_model=lambda: calls.append("MODEL"))
        assert [s.name for s in statuses] == ["web-a", "spawner", "web-b"]
        assert all(s.running and s.healthy and not s.reused for s in statuses)
        # The model hook ran once, after the services that don't need a model and before the one that does.
        assert calls.index("MODEL") < next(i for i, line in enumerate(calls) if "web-b: starting" in line)
        assert http_ok(f"http://127.0.0.1:{web_a}/") and http_ok(f"http://127.0.0.1:{web_b}/")
        record = json.loads((tmp_path / "run" / "web-a.json").read_text())
        assert record["pid"] == statuses[0].pid and record["port"] == web_a
        assert Path(record["log"]).exists()
        spawner_pid = statuses[1].pid
        deadline = time.monotonic() + 10
        while len(_children(spawner_pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        children = _children(spawner_pid)
        assert len(children) == 2 and len(_group_pids(spawner_pid)) == 2, children  # one child left the group

        again = lifecycle.up(manager, services, echo=calls.append, ensure_model=lambda: calls.append("MODEL"))
        assert [s.pid for s in again] == [s.pid for s in statuses]
        assert all(s.reused for s in again)

        table = lifecycle.format_table(lifecycle.status(manager, services))
        assert table.count("healthy") == 3 and str(web_b) in table

        stopped = lifecycle.down(manager, services, echo=calls.append)
        assert stopped == ["web-b", "spawner", "web-a"]
        for pid in [*(s.pid for s in statuses), *children]:
            assert not _alive(pid), pid
        assert not http_ok(f"http://127.0.0.1:{web_a}/", timeout=0.5)
        assert stranger.poll() is None  # a process we did not start is untouched
        assert all(not s.running for s in lifecycle.status(manager, services))
        assert list((tmp_path / "run").glob("*.json")) == []
        assert lifecycle.down(manager, services, echo=calls.append) == []
    finally:
        lifecycle.down(manager, services, echo=lambda _: None)
        stranger.kill()
        stranger.wait()


def test_port_taken_by_a_stranger_is_a_clear_error(manager: ProcessManager, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ServiceError, match=rf"port {port} .* already in use"):
            manager.start(_http_service("web", port, tmp_path))
    assert manager.record("web") is None


def test_service_dying_at_startup_reports_its_log(manager: ProcessManager) -> None:
    spec = ServiceSpec(
        name="broken",
        command=[sys.executable, "-c", "import sys; print('cannot open the database', flush=True); sys.exit(3)"],
        port=free_port(),
        startup_timeout=30,
    )
    with pytest.raises(ServiceError, match="cannot open the database"):
        manager.start(spec)
    assert manager.record("broken") is None


def test_stale_or_recycled_records_are_dropped(manager: ProcessManager) -> None:
    manager.run_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"name": "gone", "pid": dead.pid, "start_ticks": 1, "command": ["x"], "port": None, "log": "x"}
    (manager.run_dir / "gone.json").write_text(json.dumps({**stale, "started_at": 0}))
    # A live process group whose leader started at another time than the record says: the pid was recycled.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        recycled = {**stale, "name": "recycled", "pid": stranger.pid, "start_ticks": -1}
        (manager.run_dir / "recycled.json").write_text(json.dumps({**recycled, "started_at": 0}))
        (manager.run_dir / "garbage.json").write_text("{not json")
        assert manager.record("gone") is None
        assert manager.record("recycled") is None
        assert manager.record("garbage") is None
        assert not manager.stop("recycled")
        assert stranger.poll() is None  # never signalled
        assert manager.recorded_names() == []
    finally:
        stranger.kill()
        stranger.wait()


def test_stop_escalates_to_sigkill(manager: ProcessManager) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(300)"  # noqa: E501
    spec = ServiceSpec(name="stubborn", command=[sys.executable, "-c", stubborn], stop_timeout=1)
    status = manager.start(spec)
    deadline = time.monotonic() + 10
    while "ready" not in manager.log_path("stubborn").read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert manager.stop("stubborn", timeout=1)
    assert status.pid is not None and not _alive(status.pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(status.pid, 0)


def test_stack_services_bind_loopback_and_own_their_ray_temp_dir(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    services = {spec.name: spec for spec in stack_services(settings)}
    assert list(services)[:4] == ["mlflow", "prefect", "ray", "deployments"]
    for spec in services.values():
        assert spec.host == "127.0.0.1"
        assert "0.0.0.0" not in spec.command
        assert spec.env["PAWFINDER_HOME"] == str((tmp_path / "home").resolve())
    ray = services["ray"].command
    assert ray[1:4] == ["start", "--head", "--block"] and "stop" not in ray
    assert ray[ray.index("--node-ip-address") + 1] == "127.0.0.1"
    assert ray[ray.index("--dashboard-host") + 1] == "127.0.0.1"
    assert len(ray[ray.index("--temp-dir") + 1]) < 60


def test_cli_status_on_a_fresh_home_starts_nothing() -> None:
    result = CliRunner().invoke(app, ["stack", "status"])
    assert result.exit_code == 0, result.output
    assert "mlflow" in result.output and "stopped" in result.output and "healthy" not in result.output
    result = CliRunner().invoke(app, ["stack", "down"])
    assert result.exit_code == 0 and "Nothing was running" in result.output


def test_haproxy_shim_binds_hostless_listeners_to_the_host() -> None:
    config = "frontend prometheus\n    bind :9101\nfrontend http\n    bind 127.0.0.1:8000\n"
    config += "listen stats\n  bind *:8404\n"
    rebound = bind_to_host(config, "127.0.0.1")
    assert rebound == config.replace("bind :9101", "bind 127.0.0.1:9101").replace("bind *:8404", "bind 127.0.0.1:8404")
    assert serve_ingress_env(Settings(serve_ingress="proxy")) == {}
    env = serve_ingress_env(Settings())
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert Path(env["RAY_SERVE_HAPROXY_BINARY_PATH"]).name == "pawfinder-haproxy"
