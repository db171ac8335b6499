"""Puts ``tests/`` on sys.path (pytest's prepend import mode adds conftest directories), so helpers
shared across test folders, such as ``demo_reference``, import by name."""

from __future__ import annotations

import json
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


@pytest.fixture
def medallion(tmp_path: Path) -> Iterator[str]:
    """A real TAXII 2.1 server (medallion, memory backend, pages of two) with one writable
    collection; user partner / s3cret. Yields the collection URL."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    data = {
        "/discovery": {"title": "Shoal test TAXII", "default": f"{base}/api1/", "api_roots": [f"{base}/api1/"]},
        "api1": {
            "information": {"title": "api1", "versions": ["application/taxii+json;version=2.1"], "max_content_length": 10485760},
            "status": [],
            "collections": [{"id": COLLECTION, "title": "partner intel", "can_read": True, "can_write": True,
                             "media_types": ["application/stix+json;version=2.1"], "objects": [], "manifest": []}],
        },
    }  # fmt: skip
    (tmp_path / "data.json").write_text(json.dumps(data))
    config = {"backend": {"module": "medallion.backends.memory_backend", "module_class": "MemoryBackend",
                          "filename": str(tmp_path / "data.json")},
              "users": {"partner": "s3cret"}, "taxii": {"max_page_size": 2}}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    proc = subprocess.Popen([sys.executable, "-m", "medallion.scripts.run", "--host", "127.0.0.1", "--port", str(port),
                             str(tmp_path / "config.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "medallion did not start"
            time.sleep(0.1)
    yield f"{base}/api1/collections/{COLLECTION}/"
    proc.terminate()
    proc.wait(timeout=10)
