"""Puts ``tests/`` on sys.path (pytest's prepend import mode adds conftest directories), so helpers
shared across test folders, such as ``demo_reference``, import by name."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

COLLECTION = "91a7b528-80eb-42ed-a74d-c6fbd5a26116"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MedallionServer:
    """A real TAXII 2.1 server (medallion) on a fixed loopback port with one writable collection
    (user partner / s3cret, pages of two); ``durable``: what it accepted survives stop and start."""

    def __init__(self, state: Path, durable: bool = False) -> None:
        self.port = _free_port()
        self.state = state
        base = f"http://127.0.0.1:{self.port}"
        self.url = f"{base}/api1/collections/{COLLECTION}/"
        data = {
            "/discovery": {"title": "Shoal test TAXII", "default": f"{base}/api1/", "api_roots": [f"{base}/api1/"]},
            "api1": {
                "information": {"title": "api1", "versions": ["application/taxii+json;version=2.1"], "max_content_length": 10485760},
                "status": [],
                "collections": [{"id": COLLECTION, "title": "partner intel", "can_read": True, "can_write": True,
                                 "media_types": ["application/stix+json;version=2.1"], "objects": [], "manifest": []}],
            },
        }  # fmt: skip
        (state / "data.json").write_text(json.dumps(data))
        module, cls = ("medallion_durable", "DurableMemoryBackend") if durable else (
            "medallion.backends.memory_backend", "MemoryBackend")  # fmt: skip
        config = {"backend": {"module": module, "module_class": cls, "filename": str(state / "data.json")},
                  "users": {"partner": "s3cret"}, "taxii": {"max_page_size": 2}}  # fmt: skip
        (state / "config.json").write_text(json.dumps(config))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
        }
        self.proc = subprocess.Popen([sys.executable, "-m", "medallion.scripts.run", "--host", "127.0.0.1", "--port",
                                      str(self.port), str(self.state / "config.json")], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "medallion did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def medallion(tmp_path: Path) -> Iterator[str]:
    """A medallion server (memory backend); yields its collection URL."""
    server = MedallionServer(tmp_path)
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def medallion_server(tmp_path: Path) -> Iterator[MedallionServer]:
    """A medallion server that keeps its objects across stop and start (for outage tests)."""
    server = MedallionServer(tmp_path, durable=True)
    server.start()
    yield server
    server.stop()
