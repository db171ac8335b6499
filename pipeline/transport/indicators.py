"""Indicators topic I/O: the intel every detection worker matches against, as a compacted topic.

The layout (schema ``indicators/2``: per feed a manifest and Arrow IPC chunks, deltas for small
changes) is :mod:`pipeline.intel.chunks`; reading it is :class:`pipeline.intel.topic.TopicState`;
what a publish sends is :mod:`pipeline.intel.publish_plan`. Every worker reads the topic whole from
the beginning and so builds the same index; ``shoal intel publish`` / ``sync`` read it too, to send
only what changed.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Collection
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from pipeline.intel.chunks import OLD_SCHEMA_VALUE, SCHEMA_HEADER, SCHEMA_VALUE, chunk_key, manifest_key
from pipeline.intel.load import IntelLoad
from pipeline.intel.progress import Progress
from pipeline.intel.publish_plan import PublishReport, plan
from pipeline.intel.topic import TopicState
from pipeline.transport.access import denied, is_denied
from pipeline.transport.client import KafkaConnection, connection

log = logging.getLogger(__name__)

__all__ = [
    "IndicatorTopicError",
    "PublishReport",
    "assign_from_beginning",
    "publish",
    "read_state",
    "read_to_end",
]

READER_SETTINGS = {
    "enable.auto.commit": False,
    "max.partition.fetch.bytes": 8 << 20,
    "fetch.max.bytes": 64 << 20,
}
"""Readers fetch up to 8 MiB a partition at a time: a topic of ~1 MB chunks reads in few round trips."""


class IndicatorTopicError(KafkaException):
    """The indicators topic cannot be used as it is (it holds the old layout). A KafkaException, so
    every command that stops on Kafka errors stops on this one with its message."""


def old_layout_error(topic: str, count: int) -> IndicatorTopicError:
    return IndicatorTopicError(
        f"topic {topic} holds {count:,} indicators in the old layout ({OLD_SCHEMA_VALUE.decode()}, one JSON "
        f"message each), which this version does not read: publish to a new topic (the default is now "
        f"shoal.indicators.v2; `shoal topics create`), or convert this one with `shoal intel publish "
        f"--replace-old-layout` (docs/kafka.md, 'Migrating')"
    )


def assign_from_beginning(
    consumer: Consumer, topic: str, timeout: float = 30.0, kafka: KafkaConnection | str = ""
) -> list[TopicPartition]:
    """Assign every partition of ``topic`` at its first offset; returns them with their end offsets.
    ``kafka`` names the principal when the cluster denies the topic."""
    metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is not None and is_denied(metadata.error):
        raise denied(kafka, metadata.error, topic, "DESCRIBE and READ")
    if metadata is None or metadata.error is not None or not metadata.partitions:
        problem = metadata.error if metadata else "not found"
        raise KafkaException(f"topic {topic}: {problem} (create the topics with `shoal topics create`)")
    parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(metadata.partitions)]
    consumer.assign(parts)
    ends = []
    for tp in parts:
        _low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
        ends.append(TopicPartition(topic, tp.partition, high))
    return ends


def read_to_end(
    consumer: Consumer,
    ends: list[TopicPartition],
    on_message: Callable[[Message], Any],
    timeout: float = 60.0,
    progress: Progress | None = None,
) -> None:
    """Consume until every partition reached the end offset it had when assigned."""
    remaining = {tp.partition: tp.offset for tp in ends if tp.offset > 0}
    deadline = time.monotonic() + timeout
    while remaining:
        if time.monotonic() > deadline:
            raise TimeoutError(f"indicators topic: not read to its end within {timeout}s")
        for msg in consumer.consume(num_messages=10_000, timeout=0.5):
            if msg.error() is not None:
                # Readers are assigned partitions and never commit: their group is librdkafka's
                # formality, so a cluster that grants no group to this user is no reason to warn.
                quiet = msg.error().code() == KafkaError.GROUP_AUTHORIZATION_FAILED
                (log.debug if quiet else log.warning)("indicators topic: %s", msg.error())
                continue
            on_message(msg)
            if progress is not None:
                progress.update(len(msg.value() or b""))
            if msg.partition() in remaining and msg.offset() + 1 >= remaining[msg.partition()]:
                del remaining[msg.partition()]


def reader(kafka: KafkaConnection | str, prefix: str = "shoal-reader") -> Consumer:
    return Consumer(
        connection(kafka).config(**{"group.id": f"{prefix}-{uuid.uuid4().hex}", **READER_SETTINGS})
    )


def read_state(
    kafka: KafkaConnection | str, topic: str, feeds: Collection[str] | None = None, timeout: float = 120.0
) -> TopicState:
    """The topic's current content, read once from the beginning (``feeds``: decode only these
    feeds' chunks). Old-layout messages are set apart in ``old_layout``, not refused here."""
    consumer = reader(kafka)
    state = TopicState(feeds)
    try:
        with Progress(topic, None) as progress:
            read_to_end(consumer, assign_from_beginning(consumer, topic, kafka=kafka),
                        lambda m: state.apply(m.key(), m.value(), m.headers()), timeout, progress)  # fmt: skip
    finally:
        consumer.close()
    return state


def _produce(
    kafka: KafkaConnection | str, topic: str, messages: list[tuple[bytes, bytes | None]], timeout: float
) -> None:
    """Send ``messages`` in order, in partition 0: a reader meets every chunk before the manifest naming it."""
    producer = Producer(connection(kafka).config(**{"enable.idempotence": True, "acks": "all", "linger.ms": 20,
                                                    "compression.type": "none"}))  # fmt: skip
    failures: list[Any] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    headers = [(SCHEMA_HEADER, SCHEMA_VALUE)]
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key=key, partition=0, headers=headers, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(timeout) or failures:
        raise KafkaException(f"indicators topic: {len(failures)} failed, not all delivered: {failures[:3]}")


def withdraw(
    kafka: KafkaConnection | str, topic: str, feeds: list[str], timeout: float = 120.0
) -> dict[str, int]:
    """Delete ``feeds`` from the topic (their manifests and chunks, as tombstones); returns the
    indicators each held (a feed not on the topic: absent)."""
    state = read_state(kafka, topic, feeds)
    held = {feed: state.manifests[feed].indicators for feed in feeds if feed in state.manifests}
    messages = [(manifest_key(feed), None) for feed in held]
    messages += [(chunk_key(d), None) for d, feed in sorted(state.chunk_feeds.items()) if feed in set(feeds)]
    if messages:
        _produce(kafka, topic, messages, timeout)
    return held


def publish(
    kafka: KafkaConnection | str,
    topic: str,
    loads: list[IntelLoad],
    timeout: float = 120.0,
    replace_old_layout: bool = False,
) -> list[PublishReport]:
    """Send what differs between ``loads`` and the topic (an unchanged feed: nothing), in one
    partition, chunks before the manifest naming them. ``replace_old_layout``: withdraw the topic's
    indicator/1 messages too (otherwise their presence stops the publish)."""
    state = read_state(kafka, topic, {load.source for load in loads})
    if state.old_layout and not replace_old_layout:
        raise old_layout_error(topic, len(state.old_layout))
    messages, reports = plan(state, loads)
    messages += [(key.encode(), None) for key in sorted(state.old_layout)]
    if messages:
        _produce(kafka, topic, messages, timeout)
    return reports
