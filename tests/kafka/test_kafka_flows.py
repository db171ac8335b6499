"""Flows over a real Kafka broker: the Kafka sink's messages, read back by a plain consumer, are the
decoded batch exactly; keys are exporters; bad messages are refused with a reason."""

from __future__ import annotations

import time
import uuid

import pyarrow as pa
import pytest
from confluent_kafka import Consumer, KafkaError
from kafka_helpers import consume_all, create_topic

from pipeline.decode import Datagram, FlowDecoder
from pipeline.metrics import new_registry
from pipeline.runtime.replay import read_capture
from pipeline.samples import DEMO_TRAFFIC
from pipeline.schemas import FLOW_SCHEMA, bytes16_to_ip
from pipeline.sinks.kafka import KafkaSink
from pipeline.transport.flows import FlowMessageError, decode_message, encode_batch

pytestmark = pytest.mark.kafka


def demo_batch() -> pa.RecordBatch:
    return FlowDecoder().decode(
        [Datagram(d.payload, d.exporter, 2055, 1.8e9) for d in read_capture(DEMO_TRAFFIC)]
    )


def test_sink_messages_read_back_equal_the_batch(kafka) -> None:
    batch = demo_batch()
    topic = create_topic(kafka.bootstrap)
    registry = new_registry()
    sink = KafkaSink(kafka.bootstrap, topic, registry)
    sink.write(batch)
    sink.close()
    delivered = registry.get_sample_value("shoal_kafka_messages_delivered_total", {"topic": topic})
    assert delivered == 3  # one message per exporter (each well under the size limit)
    messages = consume_all(kafka.bootstrap, topic, 3)
    assert len(messages) == 3
    parts = []
    for msg in messages:
        part = decode_message(msg.value(), msg.headers())
        exporters = {str(bytes16_to_ip(e)) for e in part.column("exporter").to_pylist()}
        assert exporters == {msg.key().decode()}
        parts.append(part)
    got = pa.Table.from_batches(parts).sort_by(
        [("exporter", "ascending"), ("src_port", "ascending"), ("dst_port", "ascending")]
    )
    want = pa.Table.from_batches([batch]).sort_by(
        [("exporter", "ascending"), ("src_port", "ascending"), ("dst_port", "ascending")]
    )
    assert got.equals(want)


def test_large_batches_split_under_the_message_limit() -> None:
    batch = demo_batch()
    payloads = encode_batch(batch, max_bytes=20_000)
    assert len(payloads) > 1 and all(len(p) <= 20_000 for p in payloads)
    header = [("shoal-schema", b"flow/1")]
    rows = sum(decode_message(p, header).num_rows for p in payloads)
    assert rows == batch.num_rows


def test_bad_messages_are_refused_with_a_reason() -> None:
    good = encode_batch(demo_batch().slice(0, 5))[0]
    with pytest.raises(FlowMessageError, match="schema header"):
        decode_message(good, [("shoal-schema", b"flow/2")])
    with pytest.raises(FlowMessageError, match="schema header"):
        decode_message(good, None)
    with pytest.raises(FlowMessageError, match="Arrow IPC"):
        decode_message(b"\x00garbage" * 10, [("shoal-schema", b"flow/1")])
    other = pa.RecordBatch.from_pydict({"x": [1]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, other.schema) as w:
        w.write_batch(other)
    with pytest.raises(FlowMessageError, match="schema"):
        decode_message(sink.getvalue().to_pybytes(), [("shoal-schema", b"flow/1")])
    assert FLOW_SCHEMA.names[0] == "time_received"


def collect_demo_traffic(bootstrap: str, topic: str, *options: str):
    """``shoal collect --kafka`` on a free loopback port, the demo's 60 export packets replayed to it."""
    import subprocess
    import sys
    from pathlib import Path

    from pipeline.runtime.replay import replay

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "collect", "--listen", "127.0.0.1:0", *options,
                             "--kafka", bootstrap, "--kafka-topic", topic], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        banner = proc.stdout.readline()
        assert banner.startswith("shoal collect: listening on"), banner + proc.stderr.read()
        port = int(banner.rsplit(":", 1)[1])
        assert replay(DEMO_TRAFFIC, "127.0.0.1", {2055: port, 4739: port}) == 60
    except BaseException:
        proc.kill()
        raise
    return proc


def test_collect_to_kafka_end_to_end(kafka, tmp_path) -> None:
    """UDP export packets -> ``shoal collect --kafka`` -> flows topic: every decoded flow arrives."""
    topic = create_topic(kafka.bootstrap)
    proc = collect_demo_traffic(kafka.bootstrap, topic)
    try:
        messages = consume_all(kafka.bootstrap, topic, 3)
        proc.terminate()
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = sum(decode_message(m.value(), m.headers()).num_rows for m in messages)
    assert rows == 1800


def test_collect_with_two_workers_to_kafka(kafka, tmp_path) -> None:
    """``shoal collect --workers 2 --kafka``: each worker's own producer; every flow arrives once."""
    import re

    from pipeline.collector.config import usable_cores

    if usable_cores() < 2:
        pytest.skip("two workers need two cores")
    topic = create_topic(kafka.bootstrap)
    proc = collect_demo_traffic(kafka.bootstrap, topic, "--workers", "2")
    try:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert re.search(r"stopped: .*kafka_written=1800 kafka_dropped=0", out), out
    # every message is in the topic now (the workers flushed before exiting): read until the end
    rows, consumer = 0, Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": uuid.uuid4().hex,
                                  "auto.offset.reset": "earliest", "enable.partition.eof": True})  # fmt: skip
    consumer.subscribe([topic])
    partitions = set(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    deadline, at_end = time.monotonic() + 60, set()
    while time.monotonic() < deadline and at_end != partitions:
        for msg in consumer.consume(num_messages=100, timeout=0.5):
            if msg.error() is not None and msg.error().code() == KafkaError._PARTITION_EOF:
                at_end.add(msg.partition())
            else:
                rows += decode_message(msg.value(), msg.headers()).num_rows
    consumer.close()
    assert rows == 1800


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rows_count_as_written_only_once_the_broker_acknowledged_them(kafka) -> None:
    """Issue 15, item 6: ``kafka_written`` used to count rows handed to librdkafka, delivered or not."""
    from pipeline.sinks.buffered import BufferedSink

    batch = demo_batch()
    topic = create_topic(kafka.bootstrap)
    registry = new_registry()
    good = BufferedSink(KafkaSink(kafka.bootstrap, topic, registry), registry)
    good.check()
    good.write(batch)
    good.close()
    assert (good.written_rows, good.dropped_rows) == (batch.num_rows, 0)
    registry = new_registry()
    away = KafkaSink(f"127.0.0.1:{_closed_port()}", topic, registry, {"message.timeout.ms": 1500})
    lost = BufferedSink(away, registry)
    lost.write(batch)
    lost.close()
    assert (lost.written_rows, lost.dropped_rows) == (0, batch.num_rows)
    assert registry.get_sample_value("shoal_sink_dropped_rows_total", {"sink": "kafka"}) == batch.num_rows


def test_collect_with_an_unreachable_broker_fails_at_start() -> None:
    import subprocess
    import sys
    from pathlib import Path

    bootstrap = f"127.0.0.1:{_closed_port()}"
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "collect", "--listen", "127.0.0.1:0",
                          "--kafka", bootstrap], cwd=Path(__file__).resolve().parents[2],
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"no broker at {bootstrap} answered" in res.stderr
    assert "listening on" not in res.stdout
