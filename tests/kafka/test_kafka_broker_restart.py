"""The broker goes away while collectors run: nothing is lost within the buffers, and what does not
fit is dropped and counted — delivered + dropped equals what was sent, flow for flow."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from demo_reference import free_port
from kafka_helpers import ROOT, Broker, consume_all, create_topic, scrape, stop

from pipeline.runtime.replay import replay
from pipeline.samples import DEMO_TRAFFIC
from pipeline.transport.flows import decode_message

pytestmark = pytest.mark.kafka
DEMO_FLOWS = 1800


def start_collector(
    bootstrap: str, topic: str, metrics: str, env: dict[str, str]
) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "collect", "--listen", "127.0.0.1:0", "--kafka",
                             bootstrap, "--kafka-topic", topic, "--metrics", metrics], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})  # fmt: skip
    banner = proc.stdout.readline()
    assert banner.startswith("shoal collect: listening on"), banner + proc.stderr.read()
    return proc, int(banner.rsplit(":", 1)[1])


def send_demo(port: int) -> None:
    assert replay(DEMO_TRAFFIC, "127.0.0.1", {2055: port, 4739: port}) == 60
    time.sleep(1.5)  # one collector batch (batch.max_seconds 0.5) per replay


def test_broker_restart_loses_nothing_within_buffers_and_counts_drops_beyond(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    bootstrap = broker.start()
    roomy_topic, tight_topic = create_topic(bootstrap, 1), create_topic(bootstrap, 1)
    batching = {"SHOAL_COLLECT__BATCH__MAX_SECONDS": "0.5"}
    # "tight": librdkafka may queue one message and the collector's failure buffer 2,000 rows.
    tight_env = {
        **batching,
        "SHOAL_KAFKA_QUEUE_BUFFERING_MAX_MESSAGES": "1",
        "SHOAL_COLLECT__BUFFER__MAX_ROWS": "2000",
    }
    roomy_metrics, tight_metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    roomy, roomy_port = start_collector(bootstrap, roomy_topic, roomy_metrics, batching)
    tight, tight_port = start_collector(bootstrap, tight_topic, tight_metrics, tight_env)
    try:
        send_demo(roomy_port)
        send_demo(tight_port)
        broker.stop()
        for _ in range(2):
            send_demo(roomy_port)
        for _ in range(3):
            send_demo(tight_port)
        down = scrape(tight_metrics)
        broker.start()  # same directory: same ports, same data
        roomy_rows = sum(decode_message(m.value(), m.headers()).num_rows
                         for m in consume_all(bootstrap, roomy_topic, 3))  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and scrape(tight_metrics).get(
            'shoal_sink_buffered_rows{sink="kafka"}', 0
        ):
            time.sleep(0.5)
        tight_rows = sum(decode_message(m.value(), m.headers()).num_rows
                         for m in consume_all(bootstrap, tight_topic, 3))  # fmt: skip
        after = scrape(tight_metrics)
        roomy_after = scrape(roomy_metrics)
    finally:
        stop(roomy)
        stop(tight)
        broker.stop()
    assert roomy_rows == 3 * DEMO_FLOWS
    assert roomy_after.get('shoal_sink_dropped_rows_total{sink="kafka"}', 0) == 0
    dropped = after['shoal_sink_dropped_rows_total{sink="kafka"}']
    assert down['shoal_sink_dropped_rows_total{sink="kafka"}'] > 0  # counted while the broker was away
    assert dropped > 0 and tight_rows + dropped == 4 * DEMO_FLOWS
