"""Readiness follows the broker: a collector whose broker goes away stays alive, reports itself not
ready and says why (at start, a broker that does not answer stops the collector instead: see
test_collector_commands); a matcher worker busy consuming stays ready, its probe answered at once."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from demo_reference import free_port
from kafka_helpers import ROOT, Broker, create_topic, setup_topics, start_worker, stop, streams_config

pytestmark = pytest.mark.kafka


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_ready(metrics: str, timeout: float = 30) -> None:
    deadline, answer = time.monotonic() + timeout, (0, "")
    while time.monotonic() < deadline:
        answer = _get(f"http://{metrics}/readyz")
        if answer[0] == 200:
            return
        time.sleep(0.2)
    pytest.fail(f"never ready: {answer}")


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
        _wait_ready(metrics)
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


def test_a_consuming_matcher_worker_stays_ready_and_answers_its_probe_at_once(kafka, tmp_path: Path) -> None:
    """The broker check once used the worker's consumer from the probe's thread, where confluent-kafka
    waits for the main thread's ``consume`` to let go: the probe hung and the pod never became ready."""
    config, _names = streams_config(tmp_path, flows_partitions=1)
    setup_topics(kafka.bootstrap, config)
    metrics = f"127.0.0.1:{free_port()}"
    worker = start_worker(kafka.bootstrap, config, "ready", metrics=metrics)
    try:
        _wait_ready(metrics, timeout=60)
        for _ in range(12):  # three rounds of the background check (every 2 s) while the worker consumes
            started = time.monotonic()
            assert _get(f"http://{metrics}/readyz") == (200, "ready\n")
            assert time.monotonic() - started < 2.0  # the hang it guards against never answered
            time.sleep(0.5)
        assert worker.poll() is None
    finally:
        stop(worker)
