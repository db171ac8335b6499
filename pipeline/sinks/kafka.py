"""Kafka sink: flow batches to the flows topic, keyed by exporter, through an idempotent producer.

librdkafka queues messages while the broker is away (bounded by ``queue.buffering.max.kbytes``);
when that queue is full :class:`SinkError` is raised and the collector's buffered-sink wrapper keeps
the batch, then counts drops beyond its own bound. Delivery reports are counted per outcome, and in
rows: only rows the brokers acknowledged count as written (``confirmed_rows``); rows of messages that
failed, or were still queued at close, are lost and counted (``rows_lost``).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import pyarrow as pa
from confluent_kafka import KafkaException, Producer
from prometheus_client import CollectorRegistry, Counter

from pipeline.metrics import NAMESPACE
from pipeline.sinks.base import SinkError
from pipeline.transport.access import denied, is_denied, preflight
from pipeline.transport.client import LIBRDKAFKA_LOG, KafkaConnection, client_settings
from pipeline.transport.flows import SCHEMA_HEADER, SCHEMA_VALUE, by_exporter, encode_batch

log = logging.getLogger(__name__)


class KafkaSink:
    name = "kafka"

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        registry: CollectorRegistry,
        settings: dict[str, Any] | None = None,
        worker: str = "",
    ) -> None:
        """``worker``: a collector worker's name (``w1``...), appended to the producer's ``client.id``
        so that the brokers (quotas, logs) tell the workers' producers apart."""
        self.topic = topic
        config = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "compression.type": "none",  # payloads are zstd-compressed Arrow already
            "message.max.bytes": 1_000_000,
            "queue.buffering.max.kbytes": 262_144,
            "log_level": 3,
            "logger": LIBRDKAFKA_LOG,
            **(settings or {}),
            **client_settings(),
        }
        if worker:
            config["client.id"] = f"{config.get('client.id', 'shoal-collect')}-{worker}"
        self.connection = KafkaConnection(
            bootstrap, {k: v for k, v in config.items() if k != "bootstrap.servers"}
        )
        preflight(self.connection)
        self.denial: str | None = None
        """Set when the cluster refuses this producer the topic (a missing ACL): logged once, not ready."""
        self.producer = Producer(config)
        kw = {"namespace": NAMESPACE, "registry": registry, "labelnames": ["topic"]}
        self.delivered = Counter("kafka_messages_delivered", "Messages acknowledged by the brokers", **kw)
        self.failed = Counter("kafka_messages_failed", "Messages the producer gave up on", **kw)
        self.bytes = Counter("kafka_bytes_produced", "Payload bytes handed to the producer", **kw)
        self.confirmed_rows = 0
        self.rows_lost = 0
        self._in_flight = 0
        self.bootstrap = bootstrap

    def reachable(self) -> bool | str:
        """A broker answers a metadata request for the topic (readiness probe; raises if not), and
        has not refused this producer the topic."""
        self.producer.list_topics(self.topic, timeout=2)
        return self.denial or True

    def check(self, timeout: float = 10.0) -> None:
        """Fail at start if no broker answers or the topic does not exist."""
        try:
            topics = self.producer.list_topics(self.topic, timeout=timeout).topics
        except KafkaException as exc:
            raise SinkError(
                f"kafka: no broker at {self.bootstrap} answered within {timeout:g}s ({exc.args[0].str()})"
            ) from None
        found = topics.get(self.topic)
        if found is None or found.error is not None:
            reason = found.error if found is not None else "not found"
            raise SinkError(
                f"kafka: topic {self.topic!r} at {self.bootstrap}: {reason} (shoal topics create)"
            )

    def _report(self, rows: int, err: Any, _msg: Any) -> None:
        if self.denial is None and is_denied(err):
            self.denial = str(denied(self.connection, err, self.topic, "WRITE and DESCRIBE"))
            log.error("%s; flow batches to it fail until then", self.denial)
        (self.failed if err is not None else self.delivered).labels(self.topic).inc()
        self._in_flight -= rows
        if err is None:
            self.confirmed_rows += rows
        else:
            self.rows_lost += rows

    def write(self, batch: pa.RecordBatch) -> None:
        # Delivery reports count against librdkafka's queue until poll() serves them: serve them first,
        # or a queue that filled during a broker outage would stay full after the broker returns.
        self.producer.poll(0)
        messages = [
            (key, payload, rows)
            for key, part in by_exporter(batch)
            for payload, rows in zip(*_payloads(part), strict=True)
        ]
        for n, (key, payload, rows) in enumerate(messages):
            self._produce(key, payload, rows, first=n == 0)
        self.producer.poll(0)

    def _produce(self, key: str, payload: bytes, rows: int, first: bool) -> None:
        """Queue one message. A full queue on the batch's first message rejects the batch (nothing
        written, the caller retries it); later in the batch we wait for room instead, so a retry
        never duplicates the messages already queued."""
        for _ in range(600):
            try:
                self.producer.produce(self.topic, payload, key=key.encode(), headers=[(SCHEMA_HEADER, SCHEMA_VALUE)],
                                      on_delivery=functools.partial(self._report, rows))  # fmt: skip
                self.bytes.labels(self.topic).inc(len(payload))
                self._in_flight += rows
                return
            except BufferError as exc:
                if first and self.producer.poll(0.05) == 0:  # no report freed room: the queue is really full
                    raise SinkError(f"kafka producer queue full: {exc}") from exc
                if not first:
                    self.producer.poll(0.1)
            except KafkaException as exc:
                raise SinkError(f"kafka: {exc}") from exc
        self.failed.labels(self.topic).inc()  # still no room after a minute: counted, not silent
        self.rows_lost += rows

    def flush(self, timeout: float = 30.0) -> None:
        remaining = self.producer.flush(timeout)
        if remaining:
            raise SinkError(f"kafka: {remaining} messages not delivered within {timeout}s")

    def close(self) -> None:
        """Deliver what is queued, then stop the producer's threads, so a producer that outlives its
        broker does not go on reconnecting (and logging). Only after a complete flush: the client's
        own ``close`` flushes without a time limit (releases without it end the threads when the
        producer is collected)."""
        try:
            self.flush()
        except SinkError:
            self.rows_lost += self._in_flight  # never delivered: lost, and counted as such
            self._in_flight = 0
            raise
        close = getattr(self.producer, "close", None)
        if close is not None:
            close()


def _payloads(part: pa.RecordBatch) -> tuple[list[bytes], list[int]]:
    """IPC payloads of ``part`` and the rows each holds (``encode_batch`` halves big batches)."""
    payloads = encode_batch(part)
    if len(payloads) == 1:
        return payloads, [part.num_rows]
    rows = [pa.ipc.open_stream(p).read_all().num_rows for p in payloads]
    return payloads, rows
