"""Prometheus plumbing shared by every component.

Components never touch the global default registry: each takes a ``CollectorRegistry`` so that tests
and the embedded runtime can host several components in one process without name clashes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server

NAMESPACE = "shoal"


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


def serve(registry: CollectorRegistry, listen: str) -> None:
    """Serve ``/metrics`` for ``registry`` on ``HOST:PORT`` in a daemon thread."""
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=registry)
