"""Prometheus plumbing shared by every component, and the health endpoints of long-running commands.

Components never touch the global default registry: each takes a ``CollectorRegistry`` so that tests
and the embedded runtime can host several components in one process without name clashes.

Every command that runs until stopped serves, on its metrics port, ``/metrics`` (Prometheus text
format), ``/healthz`` (the process answers: liveness) and ``/readyz`` (every readiness check of the
command passes, e.g. listening, index loaded, Kafka reachable; the body names the failing checks).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, disable_created_metrics, make_wsgi_app

NAMESPACE = "shoal"
DEFAULT_HOST = "127.0.0.1"
OTHER = "other"

log = logging.getLogger(__name__)
disable_created_metrics()  # no *_created series: they double the series count and no dashboard reads them


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


class LabelCap:
    """Bounds one label's values: the first ``limit`` distinct values keep their name, later ones
    are reported as ``other`` (so a label fed from data, e.g. an intel feed name, cannot grow the
    series count without bound)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: Any) -> str:
        name = str(value)
        if name in self._known:
            return name
        with self._lock:
            if len(self._known) < self.limit:
                self._known.add(name)
                return name
        return OTHER


TLP_LEVELS = ("clear", "green", "amber", "amber+strict", "red")


def tlp_label(value: Any) -> str:
    """TLP 2.0 level of an alert ('white' is TLP 1.0's 'clear'); anything else is 'none'."""
    text = str(value or "").strip().lower().removeprefix("tlp:")
    text = "clear" if text == "white" else text
    return text if text in TLP_LEVELS else "none"


Check = Callable[[], "bool | str"]


class Health:
    """Named readiness checks. A check returns True when ready, or False / a reason when not; one that
    raises is not ready (with the exception as reason)."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def failing(self) -> list[str]:
        out = []
        for name, check in list(self._checks.items()):
            try:
                result = check()
            except Exception as exc:  # a probe must answer, whatever the check ran into
                result = f"{type(exc).__name__}: {exc}"
            if result is not True:
                out.append(name if result is False else f"{name}: {result}")
        return out


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or ``PORT``; no host means 127.0.0.1 (metrics are not
    exposed beyond the machine unless an address is given)."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        host, port = "", listen
    if not port.isdigit():
        raise ValueError(f"metrics address {listen!r}: expected HOST:PORT")
    return host.strip("[]") or DEFAULT_HOST, int(port)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _app(registry: CollectorRegistry, health: Health) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            status, body = "200 OK", "ok\n"
        elif path == "/readyz":
            failing = health.failing()
            status = "503 Service Unavailable" if failing else "200 OK"
            body = "".join(f"not ready: {f}\n" for f in failing) or "ready\n"
        elif path in ("/metrics", "/"):
            return metrics(environ, start_response)
        else:
            status, body = "404 Not Found", "not found: try /metrics, /healthz or /readyz\n"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [body.encode()]

    return app


def serve(registry: CollectorRegistry, listen: str, health: Health | None = None) -> tuple[str, int]:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``listen`` in daemon threads; returns the
    bound (host, port) (port 0 picks a free one)."""
    host, port = parse_listen(listen)
    server_class = type(
        "Server", (_Server,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET}
    )
    server = make_server(host, port, _app(registry, health or Health()), server_class, _QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    bound = server.server_address
    return str(bound[0]), int(bound[1])
