"""Indicators topic: the intel every detection worker matches against, as a compacted topic.

Key = indicator id (STIX id, MISP attribute uuid, list source + value); value = the normalised
indicator as JSON (``schemas/indicator/v1.json``) plus ``feed``, the source it was published from, so a
re-publish of that source can withdraw what the source no longer holds. A null value (tombstone)
withdraws an indicator: revoked, expired, or gone from its feed. Compaction keeps the latest value per
key, so reading the topic from the beginning yields the current intel; every worker reads it whole and
so builds the same index.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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

from pipeline.intel.load import IntelLoad
from pipeline.intel.model import Indicator
from pipeline.transport.access import denied, is_denied
from pipeline.transport.client import KafkaConnection, connection

log = logging.getLogger(__name__)

SCHEMA_HEADER = "shoal-schema"
INDICATOR_SCHEMA_VALUE = b"indicator/1"


class IndicatorMessageError(ValueError):
    """An indicators-topic message Shoal cannot read; the message names the key."""


def encode_indicator(indicator: Indicator, feed: str) -> bytes:
    """Canonical JSON (sorted keys), so an unchanged indicator encodes to the same bytes."""
    return json.dumps({**indicator.to_dict(), "feed": feed}, sort_keys=True, separators=(",", ":")).encode()


def decode_indicator(key: bytes | None, value: bytes) -> tuple[str, Indicator]:
    """(feed, indicator) of one message; the key must be the indicator's id."""
    name = key.decode(errors="replace") if key else "<no key>"
    try:
        data = json.loads(value)
        feed = str(data.pop("feed"))
        indicator = Indicator.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IndicatorMessageError(f"indicator {name}: {type(exc).__name__}: {exc}") from None
    if indicator.id != name:
        raise IndicatorMessageError(f"indicator {name}: key and id {indicator.id!r} differ")
    return feed, indicator


@dataclass
class IndicatorState:
    """The current content of the indicators topic, as applied message by message."""

    raw: dict[str, bytes] = field(default_factory=dict)
    indicators: dict[str, Indicator] = field(default_factory=dict)
    feeds: dict[str, str] = field(default_factory=dict)
    errors: int = 0

    def apply(self, key: bytes | None, value: bytes | None) -> bool:
        """Apply one message; returns whether the state changed. Bad messages are logged, counted
        and leave the state as it was."""
        if key is None:
            self.errors += 1
            log.warning("indicators topic: message without a key skipped")
            return False
        name = key.decode(errors="replace")
        if value is None:
            self.raw.pop(name, None)
            self.feeds.pop(name, None)
            return self.indicators.pop(name, None) is not None
        if self.raw.get(name) == value:
            return False
        try:
            feed, indicator = decode_indicator(key, value)
        except IndicatorMessageError as exc:
            self.errors += 1
            log.warning("indicators topic: %s", exc)
            return False
        self.raw[name], self.indicators[name], self.feeds[name] = value, indicator, feed
        return True


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
    on_message: Callable[[Message], None],
    timeout: float = 60.0,
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
            if msg.partition() in remaining and msg.offset() + 1 >= remaining[msg.partition()]:
                del remaining[msg.partition()]


def read_state(kafka: KafkaConnection | str, topic: str) -> IndicatorState:
    """The topic's current content, read once from the beginning."""
    consumer = Consumer(connection(kafka).config(**{"group.id": f"shoal-reader-{uuid.uuid4().hex}",
                                                    "enable.auto.commit": False}))  # fmt: skip
    state = IndicatorState()
    try:
        read_to_end(
            consumer,
            assign_from_beginning(consumer, topic, kafka=kafka),
            lambda m: state.apply(m.key(), m.value()),
        )
    finally:
        consumer.close()
    return state


@dataclass
class PublishReport:
    feed: str
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    withdrawn: int = 0


def plan(
    state: IndicatorState, loads: Iterable[IntelLoad]
) -> tuple[list[tuple[str, bytes | None]], list[PublishReport]]:
    """The messages that bring the topic from ``state`` to ``loads``: new and changed indicators,
    and tombstones for what each feed no longer holds (its loader dropped revoked or expired items)."""
    messages: list[tuple[str, bytes | None]] = []
    reports = []
    for load in loads:
        report = PublishReport(load.source)
        wanted: dict[str, bytes] = {}
        for indicator in load.indicators:
            if not indicator.revoked:
                wanted[indicator.id] = encode_indicator(indicator, load.source)
        for key, value in wanted.items():
            old = state.raw.get(key)
            if old == value:
                report.unchanged += 1
                continue
            report.new += old is None
            report.changed += old is not None
            messages.append((key, value))
        for key, feed in state.feeds.items():
            if feed == load.source and key not in wanted:
                report.withdrawn += 1
                messages.append((key, None))
        reports.append(report)
    return messages, reports


def publish(
    kafka: KafkaConnection | str, topic: str, loads: list[IntelLoad], timeout: float = 60.0
) -> list[PublishReport]:
    """Publish the differences between ``loads`` and the topic; an unchanged source produces nothing."""
    messages, reports = plan(read_state(kafka, topic), loads)
    if messages:
        producer = Producer(connection(kafka).config(**{"enable.idempotence": True, "acks": "all",
                                                        "linger.ms": 20}))  # fmt: skip
        failures: list[Any] = []

        def report(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(err)

        headers = [(SCHEMA_HEADER, INDICATOR_SCHEMA_VALUE)]
        for key, value in messages:
            while True:
                try:
                    producer.produce(topic, value, key=key.encode(), headers=headers, on_delivery=report)
                    break
                except BufferError:
                    producer.poll(0.1)
        if producer.flush(timeout) or failures:
            raise KafkaException(
                f"indicators topic: {len(failures)} failed, not all delivered: {failures[:3]}"
            )
    return reports
