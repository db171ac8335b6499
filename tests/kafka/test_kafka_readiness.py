"""Readiness follows the broker: a collector whose broker goes away stays alive, reports itself not
ready and says why (at start, a broker that does not answer stops the collector instead: see
test_collector_commands), and so do `shoal intel sync` and `shoal share`; a matcher worker busy
consuming stays ready, its probe answered at once."""

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

from pipeline.samples import DEMO_INTEL

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
        try:
            answer = _get(f"http://{metrics}/readyz")
        except OSError as exc:  # not serving yet
            answer = (0, str(exc))
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


def test_intel_sync_and_share_are_not_ready_once_their_broker_is_gone(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    config, _names = streams_config(tmp_path)
    setup_topics(broker.bootstrap, config)
    policy = tmp_path / "sharing.toml"
    policy.write_text('[identity]\nname = "Readiness NREN"\n[constituency]\ncidrs = ["192.0.2.0/24"]\n'
                      f'[[destinations]]\nname = "file"\ntype = "file"\npath = "{tmp_path / "out.jsonl"}"\n')  # fmt: skip
    metrics = {"intel sync": f"127.0.0.1:{free_port()}", "share": f"127.0.0.1:{free_port()}"}
    common = ["--kafka", broker.bootstrap, "--config", str(config)]
    procs = [
        subprocess.Popen([sys.executable, "-m", "pipeline.cli", "intel", "sync", *common, "--every", "1",
                          "--metrics", metrics["intel sync"], str(DEMO_INTEL)], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
        subprocess.Popen([sys.executable, "-m", "pipeline.cli", "share", "--policy", str(policy), *common,
                          "--metrics", metrics["share"]], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True),
    ]  # fmt: skip
    try:
        for address in metrics.values():
            _wait_ready(address, timeout=60)
        broker.stop()
        for command, address in metrics.items():
            deadline, status, body = time.monotonic() + 60, 200, ""
            while time.monotonic() < deadline and status == 200:
                status, body = _get(f"http://{address}/readyz")
                time.sleep(0.5)
            assert status == 503 and "kafka reachable" in body, (command, body)
            assert _get(f"http://{address}/healthz") == (200, "ok\n")
        assert all(p.poll() is None for p in procs)
    finally:
        for p in procs:
            stop(p)
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
