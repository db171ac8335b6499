"""TAXII 2.1: a real medallion server (memory backend) started by the test; a partner publishes with
taxii2-client, Shoal reads the collection page by page (``added_after`` paging) and matches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import stix2
from taxii2client.v21 import Collection

sys.path.insert(0, str(Path(__file__).parent.parent / "detectors"))
from flowbatch import flow_batch

from detectors.index import IndicatorIndex
from detectors.matcher import Matcher
from pipeline.intel import load_source

COLLECTION = "91a7b528-80eb-42ed-a74d-c6fbd5a26116"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def medallion(tmp_path: Path):
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


def test_taxii_collection_pages_into_the_matcher(medallion: str, monkeypatch: pytest.MonkeyPatch) -> None:
    partner = Collection(medallion, user="partner", password="s3cret")
    indicators = [
        stix2.Indicator(
            pattern=f"[ipv4-addr:value = '203.0.113.{i}']",
            pattern_type="stix",
            valid_from="2026-01-01T00:00:00Z",
            confidence=80,
        )
        for i in range(1, 6)
    ]
    partner.add_objects(stix2.Bundle(*indicators, stix2.Indicator(pattern="[url:value = 'http://x.example/']",
                        pattern_type="stix", valid_from="2026-01-01T00:00:00Z")).serialize())  # fmt: skip
    monkeypatch.setenv("SHOAL_TAXII_USER", "partner")
    monkeypatch.setenv("SHOAL_TAXII_PASSWORD", "s3cret")
    load = load_source(f"taxii:{medallion}")
    # six objects over pages of two: every indicator arrived, the URL one is counted as unsupported
    assert sorted(i.id for i in load.indicators) == sorted(i.id for i in indicators)
    assert load.unsupported == {"object url": 1}
    alerts = Matcher(IndicatorIndex.build(load.indicators)).match(
        flow_batch([{"src": "192.0.2.1", "dst": "203.0.113.3"}, {"src": "192.0.2.1", "dst": "203.0.113.9"}])
    )
    assert alerts.column("dst_addr").to_pylist() == [bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 3])]
    assert os.environ["SHOAL_TAXII_USER"] == "partner"
