"""Kafka sink: flow batches to the flows topic, keyed by exporter, through an idempotent producer.

librdkafka queues messages while the broker is away (bounded by ``queue.buffering.max.kbytes``);
when that queue is full :class:`SinkError` is raised and the collector's buffered-sink wrapper keeps
the batch, then counts drops beyond its own bound. Delivery reports are counted per outcome.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
from confluent_kafka import KafkaException, Producer
from prometheus_client import CollectorRegistry, Counter

from pipeline.metrics import NAMESPACE
from pipeline.sinks.base import SinkError
from pipeline.transport.access import denied, is_denied, preflight
from pipeline.transport.client import KafkaConnection, client_settings
from pipeline.transport.flows import SCHEMA_HEADER, SCHEMA_VALUE, by_exporter, encode_batch

log = logging.getLogger(__name__)


class KafkaSink:
    name = "kafka"

    def __init__(
        self, bootstrap: str, topic: str, registry: CollectorRegistry, settings: dict[str, Any] | None = None
    ) -> None:
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
            **(settings or {}),
            **client_settings(),
        }
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

    def reachable(self) -> bool | str:
        """A broker answers a metadata request for the topic (readiness probe; raises if not), and
        has not refused this producer the topic."""
        self.producer.list_topics(self.topic, timeout=2)
        return self.denial or True

    def _report(self, err: Any, _msg: Any) -> None:
        if self.denial is None and is_denied(err):
            self.denial = str(denied(self.connection, err, self.topic, "WRITE and DESCRIBE"))
            log.error("%s; flow batches to it fail until then", self.denial)
        (self.failed if err is not None else self.delivered).labels(self.topic).inc()

    def write(self, batch: pa.RecordBatch) -> None:
        # Delivery reports count against librdkafka's queue until poll() serves them: serve them first,
        # or a queue that filled during a broker outage would stay full after the broker returns.
        self.producer.poll(0)
        messages = [(key, payload) for key, part in by_exporter(batch) for payload in encode_batch(part)]
        for n, (key, payload) in enumerate(messages):
            self._produce(key, payload, first=n == 0)
        self.producer.poll(0)

    def _produce(self, key: str, payload: bytes, first: bool) -> None:
        """Queue one message. A full queue on the batch's first message rejects the batch (nothing
        written, the caller retries it); later in the batch we wait for room instead, so a retry
        never duplicates the messages already queued."""
        for _ in range(600):
            try:
                self.producer.produce(self.topic, payload, key=key.encode(), headers=[(SCHEMA_HEADER, SCHEMA_VALUE)],
                                      on_delivery=self._report)  # fmt: skip
                self.bytes.labels(self.topic).inc(len(payload))
                return
            except BufferError as exc:
                if first and self.producer.poll(0.05) == 0:  # no report freed room: the queue is really full
                    raise SinkError(f"kafka producer queue full: {exc}") from exc
                if not first:
                    self.producer.poll(0.1)
            except KafkaException as exc:
                raise SinkError(f"kafka: {exc}") from exc
        self.failed.labels(self.topic).inc()  # still no room after a minute: counted, not silent

    def flush(self, timeout: float = 30.0) -> None:
        remaining = self.producer.flush(timeout)
        if remaining:
            raise SinkError(f"kafka: {remaining} messages not delivered within {timeout}s")

    def close(self) -> None:
        """Deliver what is queued, then stop the producer's threads, so a producer that outlives its
        broker does not go on reconnecting (and logging). Only after a complete flush: the client's
        own ``close`` flushes without a time limit (releases without it end the threads when the
        producer is collected)."""
        self.flush()
        close = getattr(self.producer, "close", None)
        if close is not None:
            close()
