"""A small process manager: start services as detached process groups, with PID records and logs on disk.

Each service runs in its own session (process group), so stopping it signals exactly the processes it spawned and
nothing else on the machine. A JSON record per service (pid, process start time, command, port, log file) lets a
later ``up``, ``status`` or ``down`` — from another shell — find what an earlier ``up`` started, and guards against
a recycled PID being mistaken for ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import httpx

HealthCheck = Callable[[], bool]


class ServiceError(RuntimeError):
    """A service could not be started or stopped; the message says why and where its log is."""


def http_ok(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> bool:
    """True when ``url`` answers 2xx within ``timeout`` seconds."""
    try:
        return httpx.get(url, timeout=timeout, headers=headers).is_success
    except httpx.HTTPError:
        return False


def port_in_use(host: str, port: int) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one service: its command, environment, port and what "healthy" means."""

    name: str
    command: list[str]
    url: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    health: HealthCheck | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    startup_timeout: float = 120.0
    stop_timeout: float = 30.0
    needs_model: bool = False


@dataclass(frozen=True)
class ProcessRecord:
    """What ``start`` wrote down about a running service."""

    name: str
    pid: int
    start_ticks: int | None
    command: list[str]
    port: int | None
    log: str
    started_at: float


@dataclass(frozen=True)
class ServiceStatus:
    """What ``status`` reports for one service."""

    name: str
    running: bool
    healthy: bool
    pid: int | None = None
    port: int | None = None
    url: str | None = None
    log: str | None = None
    reused: bool = False


def _start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot (Linux ``/proc``); ``None`` for a zombie or without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing parenthesis.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the group exists but is not ours: treat as alive, never signal it
        return True
    return True


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent pid, process group, start ticks) of every live process (Linux ``/proc``; else empty)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            table[int(stat.parent.name)] = (int(fields[1]), int(fields[2]), int(fields[19]))
    return table


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _descendants(pgid: int) -> dict[int, int]:
    """pid -> start ticks of every live process descended from a member of process group ``pgid``."""
    table = _proc_table()
    found = {pid for pid, (_, group, _) in table.items() if group == pgid}
    frontier = set(found)
    while frontier:
        frontier = {pid for pid, (parent, _, _) in table.items() if parent in frontier and pid not in found}
        found |= frontier
    return {pid: table[pid][2] for pid in found}


def _stop_processes(processes: dict[int, int], grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, the processes (pid -> start ticks) that are still the same."""

    def alive() -> list[int]:
        return [pid for pid, ticks in processes.items() if _start_ticks(pid) == ticks]

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ProcessManager:
    """Starts, inspects and stops services; state lives in ``run_dir`` (PID records) and ``log_dir``."""

    def __init__(self, run_dir: Path, log_dir: Path) -> None:
        self.run_dir = run_dir
        self.log_dir = log_dir

    def _record_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def recorded_names(self) -> list[str]:
        """Names of the services that have a PID record (running or stale)."""
        return sorted(path.stem for path in self.run_dir.glob("*.json"))

    def log_path(self, name: str) -> Path:
        """Where the combined stdout/stderr of service ``name`` goes."""
        return self.log_dir / f"{name}.log"

    def record(self, name: str) -> ProcessRecord | None:
        """The record of service ``name`` if its process group is still the one we started, else ``None``.

        A record whose process is gone (or whose PID now belongs to another program) is deleted.
        """
        path = self._record_path(name)
        try:
            record = ProcessRecord(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            path.unlink(missing_ok=True)
            return None
        if self._is_ours(record):
            return record
        path.unlink(missing_ok=True)
        return None

    @staticmethod
    def _is_ours(record: ProcessRecord) -> bool:
        if not _group_alive(record.pid):
            return False
        ticks = _start_ticks(record.pid)
        if ticks is not None and record.start_ticks is not None:
            return ticks == record.start_ticks
        # The leader exited but members of its group live on (or no /proc): the group id is still ours.
        return True

    def status(self, spec: ServiceSpec) -> ServiceStatus:
        """Whether ``spec`` runs (started by us) and answers its health check."""
        record = self.record(spec.name)
        return ServiceStatus(
            name=spec.name,
            running=record is not None,
            healthy=record is not None and self._healthy(spec),
            pid=record.pid if record else None,
            port=spec.port,
            url=spec.url,
            log=str(self.log_path(spec.name)),
        )

    @staticmethod
    def _healthy(spec: ServiceSpec) -> bool:
        if spec.health is not None:
            return spec.health()
        if spec.port is not None:
            return port_in_use(spec.host, spec.port)
        return True

    def start(self, spec: ServiceSpec) -> ServiceStatus:
        """Start ``spec`` unless it already runs, then wait until it is healthy. Idempotent."""
        if self.record(spec.name) is not None:
            self.wait_healthy(spec)
            return replace(self.status(spec), reused=True)
        if spec.port is not None and port_in_use(spec.host, spec.port):
            raise ServiceError(
                f"{spec.name}: port {spec.port} on {spec.host} is already in use by a process this stack did not "
                f"start; stop it or choose another port (see `pawfinder config`)."
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(spec.name)
        with log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(spec.command)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                spec.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **spec.env},
                cwd=spec.cwd,
                start_new_session=True,
            )
        record = ProcessRecord(
            name=spec.name,
            pid=process.pid,
            start_ticks=_start_ticks(process.pid),
            command=spec.command,
            port=spec.port,
            log=str(log_path),
            started_at=time.time(),
        )
        self._record_path(spec.name).write_text(json.dumps(asdict(record), indent=2))
        try:
            self.wait_healthy(spec, process)
        except ServiceError:
            self.stop(spec.name, timeout=spec.stop_timeout)
            raise
        return self.status(spec)

    def wait_healthy(self, spec: ServiceSpec, process: subprocess.Popen[bytes] | None = None) -> None:
        """Block until ``spec`` is healthy; raise ``ServiceError`` with its log tail if it dies or times out."""
        deadline = time.monotonic() + spec.startup_timeout
        while not self._healthy(spec):
            exited = process.poll() is not None if process is not None else self.record(spec.name) is None
            if exited:
                raise ServiceError(
                    f"{spec.name} exited during startup; log {self.log_path(spec.name)}:\n"
                    f"{_log_tail(self.log_path(spec.name))}"
                )
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{spec.name} not healthy after {spec.startup_timeout:.0f}s; log {self.log_path(spec.name)}:\n"
                    f"{_log_tail(self.log_path(spec.name))}"
                )
            time.sleep(0.5)

    def stop(self, name: str, timeout: float = 30.0) -> bool:
        """Stop service ``name``: SIGTERM to its process group, SIGKILL after ``timeout``. True if it ran.

        Descendants that left the group (Ray's raylet starts every worker in a session of its own) are found
        beforehand by walking the process tree and stopped too, each checked by its start time first.
        """
        record = self.record(name)
        if record is None:
            return False
        strays = {pid: ticks for pid, ticks in _descendants(record.pid).items() if _pgid(pid) != record.pid}
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, signal.SIGTERM)
        if not self._wait_group(record.pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.pid, signal.SIGKILL)
            self._wait_group(record.pid, timeout)
        _stop_processes(strays, grace=min(timeout, 10.0))
        self._record_path(name).unlink(missing_ok=True)
        return True

    def _wait_group(self, pgid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while _group_alive(pgid):
            if time.monotonic() > deadline:
                return False
            self._reap(pgid)
            time.sleep(0.2)
        return True

    @staticmethod
    def _reap(pid: int) -> None:
        """Collect the exit status if ``pid`` is our own child, so it does not linger as a zombie."""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
