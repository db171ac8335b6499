"""The Kafka detection worker: consume flow batches, match them, and produce the alerts and the
batch's partial aggregates (for confirmation) in one Kafka transaction together with the consumed
offsets (consume-transform-produce, exactly once for readers with ``isolation.level=read_committed``).

Scaling is Kafka's: workers in one consumer group share the flows topic's partitions. Each worker has
a stable identity (static group membership and transactional id), so a restarted worker takes its
partitions back at once and fences whatever its previous incarnation left open.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from detectors.matcher import MatcherHandle
from pipeline.confirm.settings import DetectionSettings
from pipeline.confirm.stage import PartialsStage
from pipeline.metrics import NAMESPACE
from pipeline.runtime.matching import MatchingSink
from pipeline.sinks.base import SinkError
from pipeline.transport.access import denied, is_denied
from pipeline.transport.alerts import ALERT_SCHEMA_VALUE, SCHEMA_HEADER, encode_alert
from pipeline.transport.client import KafkaConnection, connection
from pipeline.transport.config import StreamsConfig
from pipeline.transport.detections import PARTIAL_SCHEMA, pack_partials
from pipeline.transport.flows import FlowMessageError, decode_message

log = logging.getLogger(__name__)


class KafkaAlertOutput:
    """Alerts into the producer's open transaction (keyed by indicator id)."""

    def __init__(self, producer: Producer, topic: str) -> None:
        self.producer, self.topic = producer, topic
        self.headers = [(SCHEMA_HEADER, ALERT_SCHEMA_VALUE)]

    def write(self, alerts: list[dict[str, Any]]) -> None:
        for alert in alerts:
            key, value = encode_alert(alert)
            while True:
                try:
                    self.producer.produce(self.topic, value, key=key, headers=self.headers)
                    break
                except BufferError:  # queue full: let deliveries drain, the transaction stays open
                    self.producer.poll(0.05)
        self.producer.poll(0)

    def close(self) -> None:
        pass


class KafkaPartialOutput:
    """Partials into the producer's open transaction, packed per partition of the partials topic
    (whose partition count is read at the first write, inside the worker's first transaction)."""

    def __init__(self, producer: Producer, topic: str, kafka: KafkaConnection) -> None:
        self.producer, self.topic, self.kafka = producer, topic, kafka
        self.headers = [(SCHEMA_HEADER, PARTIAL_SCHEMA)]
        self.partitions = 0

    def _partition_count(self) -> int:
        metadata = self.producer.list_topics(self.topic, timeout=30).topics.get(self.topic)
        if metadata is not None and metadata.error is not None:
            refused = denied(self.kafka, metadata.error, self.topic, "WRITE and DESCRIBE")
            if refused is not None:
                raise refused
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise KafkaException(f"topic {self.topic}: {metadata.error if metadata else 'not found'} "
                                 "(create the topics with `shoal topics create`)")  # fmt: skip
        return len(metadata.partitions)

    def write(self, partials: list[dict[str, Any]]) -> None:
        self.partitions = self.partitions or self._partition_count()
        for partition, key, value in pack_partials(partials, self.partitions):
            while True:
                try:
                    self.producer.produce(
                        self.topic, value, key=key, partition=partition, headers=self.headers
                    )
                    break
                except BufferError:
                    self.producer.poll(0.05)


class DetectWorker:
    def __init__(
        self,
        kafka: KafkaConnection | str,
        config: StreamsConfig,
        handle: MatcherHandle,
        registry: CollectorRegistry,
        detection_settings: DetectionSettings | None = None,
    ) -> None:
        d, topics = config.detect, config.topics
        self.config = config
        self.identity = d.identity()
        kafka = self.kafka = connection(kafka)
        self.consumer = Consumer(kafka.config(**{
            "group.id": d.group, "group.instance.id": self.identity, "enable.auto.commit": False,
            "isolation.level": "read_committed", "auto.offset.reset": "earliest",
            "session.timeout.ms": d.session_timeout_ms,
        }))  # fmt: skip
        self.producer = Producer(kafka.config(**{
            "transactional.id": f"shoal-detect.{d.group}.{self.identity}",
            "transaction.timeout.ms": d.transaction_timeout_ms, "linger.ms": 5, "compression.type": "lz4",
        }))  # fmt: skip
        partials = None
        if d.partials:
            output = KafkaPartialOutput(self.producer, topics.partials.name, kafka)
            partials = PartialsStage(detection_settings or DetectionSettings(), output, registry)
        self.sink = MatchingSink(handle, [KafkaAlertOutput(self.producer, topics.alerts.name)], registry, partials,
                                 observe_latency=False)  # fmt: skip
        kw: dict[str, Any] = {"namespace": NAMESPACE, "registry": registry}
        self.messages = Counter("detect_messages", "Flow messages consumed", **kw)
        self.bad = Counter("detect_bad_messages", "Flow messages skipped, by reason", ["reason"], **kw)
        self.transactions = Counter("detect_transactions", "Transactions by outcome", ["outcome"], **kw)
        self.lag = ConsumerLag(self.consumer, registry)
        self._last_warning = 0.0

    def reachable(self) -> bool:
        """A broker answers a metadata request for the flows topic (readiness probe; raises if not).
        Asked through the producer: the probe runs in another thread, and confluent-kafka's
        ``Consumer.list_topics`` there waits while the main thread is in ``consume`` (it hung
        past its own timeout, for good, in the tests)."""
        self.producer.list_topics(self.config.topics.flows.name, timeout=2)
        return True

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set: consume, match, commit. Fatal client errors raise (the process
        exits and its supervisor restarts it; the transaction left open is fenced)."""
        d = self.config.detect
        try:
            self.producer.init_transactions(60)
        except KafkaException as exc:
            transactional_id = f"shoal-detect.{d.group}.{self.identity}"
            raise denied(self.kafka, exc.args[0], transactional_id, "WRITE and DESCRIBE") or exc from exc
        self.consumer.subscribe([self.config.topics.flows.name])
        try:
            while not stop.is_set():
                messages = self.consumer.consume(num_messages=d.max_messages, timeout=d.poll_seconds)
                if messages:
                    self._process(messages)
                self.lag.update()
        finally:
            self.consumer.close()
            self.producer.flush(10)

    def _process(self, messages: list[Any]) -> None:
        batches = []
        for msg in messages:
            if msg.error() is not None:
                if is_denied(msg.error()):  # a missing ACL: retrying cannot help
                    group = msg.error().code() == KafkaError.GROUP_AUTHORIZATION_FAILED
                    resource = (
                        self.config.detect.group if group else msg.topic() or self.config.topics.flows.name
                    )
                    raise denied(
                        self.kafka, msg.error(), resource, "READ" + ("" if group else " and DESCRIBE")
                    )
                self._skip("consumer_error", str(msg.error()))
                continue
            self.messages.inc()
            try:
                batches.append(decode_message(msg.value(), msg.headers()))
            except FlowMessageError as exc:
                self._skip(exc.reason, f"{msg.topic()}[{msg.partition()}]@{msg.offset()}: {exc}")
        self.producer.begin_transaction()
        try:
            if batches:
                try:
                    self.sink.write(pa.Table.from_batches(batches))
                except SinkError as exc:  # the matcher failed on this data: skipped and counted
                    self._skip("match_error", str(exc), len(batches))
            positions = [tp for tp in self.consumer.position(self.consumer.assignment()) if tp.offset >= 0]
            self.producer.send_offsets_to_transaction(positions, self.consumer.consumer_group_metadata())
            self._commit()
        except KafkaException as exc:
            error = exc.args[0]
            if not error.txn_requires_abort():
                raise
            log.warning("transaction aborted, re-reading from the committed offsets: %s", error)
            self.producer.abort_transaction()
            self.transactions.labels("aborted").inc()
            self._rewind()
            return
        if batches:
            self.sink.observe_latency(pa.Table.from_batches(batches))

    def _commit(self) -> None:
        for attempt in range(10):
            try:
                self.producer.commit_transaction(30)
                self.transactions.labels("committed").inc()
                return
            except KafkaException as exc:
                if not exc.args[0].retriable() or attempt == 9:
                    raise
                time.sleep(0.5)

    def _rewind(self) -> None:
        """After an abort, go back to the last committed offsets so nothing is skipped."""
        assignment = self.consumer.assignment()
        for tp in self.consumer.committed(assignment, timeout=30):
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def _skip(self, reason: str, detail: str, count: int = 1) -> None:
        self.bad.labels(reason).inc(count)
        now = time.monotonic()
        if now - self._last_warning > 10:  # one line per 10 s at most: a flood of garbage stays readable
            log.warning("skipped flow message (%s): %s", reason, detail)
            self._last_warning = now


class ConsumerLag:
    """Lag of this worker's assigned partitions (high watermark minus position), refreshed by the
    worker loop from librdkafka's cached watermarks (no broker round trip) and exported at scrape
    time. Labels are bounded by the flows topic's partition count; a revoked partition disappears."""

    def __init__(self, consumer: Consumer, registry: CollectorRegistry) -> None:
        self.consumer = consumer
        self._lag: dict[tuple[str, int], int] = {}
        registry.register(self)

    def update(self) -> None:
        lag = {}
        for tp in self.consumer.position(self.consumer.assignment()):
            _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                lag[(tp.topic, tp.partition)] = max(0, high - tp.offset)
            elif high >= 0:  # nothing consumed yet: the whole partition is behind
                lag[(tp.topic, tp.partition)] = max(0, high - max(_low, 0))
        self._lag = lag

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fam = GaugeMetricFamily(f"{NAMESPACE}_detect_consumer_lag_messages",
                                "Messages behind the partition's end, per assigned flows partition",
                                labels=["topic", "partition"])  # fmt: skip
        for (topic, partition), lag in sorted(self._lag.items()):
            fam.add_metric([topic, str(partition)], lag)
        yield fam
