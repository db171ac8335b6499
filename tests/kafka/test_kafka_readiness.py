"""Readiness follows the broker: a collector whose broker goes away stays alive, reports itself not
ready and says why (at start, a broker that does not answer stops the collector instead: see
test_collector_commands)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from demo_reference import free_port
from kafka_helpers import ROOT, Broker, create_topic, stop

pytestmark = pytest.mark.kafka


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_collect_is_not_ready_once_its_broker_is_gone(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    metrics = f"127.0.0.1:{free_port()}"
    proc = None
    try:
        topic = create_topic(broker.bootstrap, partitions=1)
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "collect", "--listen", "127.0.0.1:0",
                                 "--kafka", broker.bootstrap, "--kafka-topic", topic, "--metrics", metrics],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        banner = proc.stdout.readline()
        assert banner.startswith("shoal collect: listening on"), banner + proc.stderr.read()
        assert _get(f"http://{metrics}/readyz")[0] == 200
        broker.stop()
        deadline, status, body = time.monotonic() + 60, 200, ""
        while time.monotonic() < deadline and status == 200:
            status, body = _get(f"http://{metrics}/readyz")
            time.sleep(0.5)
        assert status == 503 and "kafka reachable" in body, body
        assert _get(f"http://{metrics}/healthz") == (200, "ok\n")
        assert proc.poll() is None
    finally:
        if proc is not None:
            stop(proc)
        broker.stop()
