"""Helpers for the Kafka tests: per-test topics, ``shoal`` subprocesses, read_committed readers."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.decode import Datagram, FlowDecoder
from pipeline.runtime.replay import read_capture
from pipeline.samples import DEMO_INTEL, DEMO_TRAFFIC
from pipeline.schemas import bytes16_to_ip
from pipeline.transport.config import TopicsConfig

ROOT = Path(__file__).resolve().parents[2]
TOPIC_KINDS = [f.name for f in dataclasses.fields(TopicsConfig)]


def streams_config(tmp_path: Path, flows_partitions: int = 3) -> tuple[Path, dict[str, str]]:
    """A TOML file naming fresh topics for one test; returns (path, topic names)."""
    tag = uuid.uuid4().hex[:8]
    names = {kind: f"t{tag}.{kind}" for kind in TOPIC_KINDS}
    path = tmp_path / f"streams-{tag}.toml"
    path.write_text(
        f'[topics.flows]\nname = "{names["flows"]}"\npartitions = {flows_partitions}\n'
        + "".join(f'[topics.{kind}]\nname = "{names[kind]}"\n' for kind in TOPIC_KINDS if kind != "flows")
        + f'[detect]\ngroup = "g{tag}"\n[confirm]\ngroup = "c{tag}"\n[share]\ngroup = "s{tag}"\n'
    )
    return path, names


def shoal(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **(env or {})}, check=False)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def setup_topics(bootstrap: str, config: Path, intel: Path = DEMO_INTEL) -> None:
    out = shoal("topics", "create", "--kafka", bootstrap, "--config", str(config))
    assert out.count(": created") == len(TOPIC_KINDS), out
    shoal("intel", "publish", "--kafka", bootstrap, "--config", str(config), str(intel))


def start_worker(bootstrap: str, config: Path, instance: str, metrics: str = "",
                 env: dict[str, str] | None = None, detections: Path | None = None) -> subprocess.Popen:  # fmt: skip
    args = ["detect", "--kafka", bootstrap, "--config", str(config), "--instance-id", instance]
    if detections is not None:
        args += ["--detections", str(detections)]
    if metrics:
        args += ["--metrics", metrics]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})  # fmt: skip
    banner = proc.stdout.readline()
    assert banner.startswith("shoal detect: worker"), banner + proc.stderr.read()
    return proc


def stop(proc: subprocess.Popen) -> tuple[str, str]:
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def reader(bootstrap: str, topic: str) -> Consumer:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([topic])
    return consumer


def read_alerts(
    bootstrap: str, topic: str, expected: int, timeout: float = 60, settle: float = 2.0
) -> list[dict]:
    """Committed alerts until ``expected`` arrived, then ``settle`` seconds more (to catch extras)."""
    consumer = reader(bootstrap, topic)
    alerts: list[dict] = []
    deadline, done_at = time.monotonic() + timeout, None
    try:
        while time.monotonic() < deadline and (done_at is None or time.monotonic() < done_at + settle):
            for msg in consumer.consume(num_messages=1000, timeout=0.3):
                assert msg.error() is None, msg.error()
                alerts.append(json.loads(msg.value()))
            if done_at is None and len(alerts) >= expected:
                done_at = time.monotonic()
    finally:
        consumer.close()
    return alerts


def demo_batch(received: datetime | None = None) -> pa.RecordBatch:
    """The bundled sample traffic decoded; every flow stamped ``received`` (to tell batches apart)."""
    batch = FlowDecoder().decode(
        [Datagram(d.payload, d.exporter, 2055, 1.8e9) for d in read_capture(DEMO_TRAFFIC)]
    )
    when = received or datetime.now(UTC)
    column = pa.array([when] * batch.num_rows, type=batch.schema.field("time_received").type)
    field = batch.schema.field("time_received")
    return batch.set_column(batch.schema.get_field_index("time_received"), field, column)


def flow_tuples(batch: pa.RecordBatch) -> list[tuple[str, str, int, int]]:
    src = [str(bytes16_to_ip(v)) for v in batch.column("src_addr").to_pylist()]
    dst = [str(bytes16_to_ip(v)) for v in batch.column("dst_addr").to_pylist()]
    return list(
        zip(src, dst, batch.column("src_port").to_pylist(), batch.column("dst_port").to_pylist(), strict=True)
    )


def alert_key(alert: dict) -> tuple:
    received = datetime.fromisoformat(alert["time_received"].replace("Z", "+00:00"))
    return (int(received.timestamp()), alert["src_addr"], alert["dst_addr"], alert["src_port"], alert["dst_port"],
            alert["side"])  # fmt: skip


def scrape(metrics: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if m := re.fullmatch(r"(shoal_[^ ]+) ([0-9.e+-]+)", line):
            out[m.group(1)] = float(m.group(2))
    return out


class Broker:
    def __init__(self, state: Path) -> None:
        self.env = {
            **os.environ,
            "SHOAL_KAFKA_DIR": str(state),
            "PYTHON": str(ROOT / ".venv" / "bin" / "python"),
        }
        self.bootstrap = ""

    def _run(self, action: str) -> str:
        res = subprocess.run([str(ROOT / "scripts" / "kafka.sh"), action], env=self.env, capture_output=True,
                             text=True, timeout=180, check=False)  # fmt: skip
        if res.returncode:
            raise RuntimeError(f"kafka.sh {action} failed: {res.stderr[-2000:]}")
        return res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""

    def start(self) -> str:
        self.bootstrap = self._run("start")
        return self.bootstrap

    def stop(self) -> None:
        self._run("stop")


def create_topic(bootstrap: str, partitions: int = 3) -> str:
    name = f"flows-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(30)
    return name


def consume_all(bootstrap: str, topic: str, expected: int) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed"})  # fmt: skip
    consumer.subscribe([topic])
    messages = []
    for _ in range(60):
        for msg in consumer.consume(num_messages=100, timeout=0.5):
            assert msg.error() is None, msg.error()
            messages.append(msg)
        if len(messages) >= expected:
            break
    consumer.close()
    return messages
