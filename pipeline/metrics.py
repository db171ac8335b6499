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
import time
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
POLL_SECONDS = 2.0
"""How often a readiness check that waits on something remote runs (see :meth:`Health.add`)."""


class Health:
    """Named readiness checks. A check returns True when ready, or False / a reason when not; one that
    raises is not ready (with the exception as reason)."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def add(self, name: str, check: Check, poll_every: float | None = None) -> None:
        """``poll_every``: the check waits on something remote (a broker, a worker process), so a
        background thread runs it every that many seconds and probes read its last result (see
        :class:`PolledCheck`). A probe then answers within a second, however slow the remote side:
        Kubernetes gives a probe 5 s, and probes that waited on a slow broker piled up behind one
        another until none answered in time."""
        old = self._checks.get(name)
        if isinstance(old, PolledCheck):
            old.close()
        self._checks[name] = check if poll_every is None else PolledCheck(name, check, poll_every)

    def failing(self) -> list[str]:
        out = []
        for name, check in list(self._checks.items()):
            result = run_check(check)
            if result is not True:
                out.append(name if result is False else f"{name}: {result}")
        return out


def run_check(check: Check) -> bool | str:
    try:
        return check()
    except Exception as exc:  # a probe must answer, whatever the check ran into
        return f"{type(exc).__name__}: {exc}"


class PolledCheck:
    """A readiness check run by a daemon thread of its own every ``every`` seconds. Calling it returns
    the last result at once when that was ready; when it was not, the call asks for a fresh run and
    waits for it at most ``fresh_wait`` seconds, so a probe right after start-up sees the command
    ready without waiting a whole period. One run at a time, so a hung check costs one thread, and a
    run that has not come back for ``stale_after`` seconds (default ``3 * every``, at least 10) is
    reported as not ready."""

    def __init__(
        self, name: str, check: Check, every: float, stale_after: float | None = None, fresh_wait: float = 1.0
    ) -> None:
        self.check = check
        self.every = every
        self.stale_after = stale_after if stale_after is not None else max(3 * every, 10.0)
        self.fresh_wait = fresh_wait
        self._result: bool | str = "not checked yet"
        self._running_since: float | None = None
        self._asked = 0
        """Fresh runs asked for so far; ``_answered`` is how many of those the last run covers."""
        self._answered = 0
        self._closed = False
        self._changed = threading.Condition()
        threading.Thread(target=self._poll, name=f"readiness {name}", daemon=True).start()

    def __call__(self) -> bool | str:
        with self._changed:
            if self._result is not True and self._stale() is None and not self._closed:
                self._asked += 1
                asked = self._asked
                self._changed.notify_all()
                self._changed.wait_for(lambda: self._answered >= asked, timeout=self.fresh_wait)
            return self._stale() or self._result

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _stale(self) -> str | None:
        since = self._running_since
        if since is not None and (waited := time.monotonic() - since) > self.stale_after:
            return f"check has not come back for {waited:.0f} s"
        return None

    def _poll(self) -> None:
        while True:
            with self._changed:
                if self._closed:
                    return
                self._running_since, covers = time.monotonic(), self._asked
            result = run_check(self.check)
            with self._changed:
                self._result, self._running_since, self._answered = result, None, covers
                self._changed.notify_all()
                self._changed.wait_for(
                    lambda: self._closed or self._asked > self._answered, timeout=self.every
                )


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
