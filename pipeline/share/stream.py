"""One destination's loop on the detections topic: read (the whole compacted topic at start, what lies
before the committed offset as already delivered), aggregate, hand new versions to the outbox, send,
commit past what is settled. ``shoal share`` runs one per destination, each in a thread of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from stix2.exceptions import STIXError

from pipeline.share.aggregate import Aggregator
from pipeline.share.build import ShareBuilder
from pipeline.share.delivery import MAX_PENDING, Outbox, ShareMetrics
from pipeline.share.destinations.base import Destination
from pipeline.share.guard import ConstituencyGuard
from pipeline.share.policy import DestinationConfig, SharingPolicy
from pipeline.transport.client import KafkaConnection
from pipeline.transport.detections import MessageError, decode_json

log = logging.getLogger("shoal.share")
COMMIT_SECONDS = 1.0
RETRY_CODES = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
               KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT}  # fmt: skip
REQUIRED = ("id", "kind", "key", "state", "window_start", "window_end", "updated", "flows", "first_seen",
            "last_seen", "internal_hosts")  # fmt: skip


class DestinationLoop:
    def __init__(
        self, kafka: KafkaConnection, topic: str, group: str, policy: SharingPolicy, config: DestinationConfig,
        destination: Destination, metrics: ShareMetrics, stop: threading.Event,
    ) -> None:  # fmt: skip
        self.topic, self.config, self.metrics, self.stop = topic, config, metrics, stop
        self.aggregator = Aggregator(ShareBuilder(policy), max_groups=policy.max_groups)
        self.outbox = Outbox(config, destination, ConstituencyGuard(policy.constituency_set()), metrics)
        self.destination = destination
        self.consumer = Consumer(kafka.config(**{
            "group.id": f"{group}.{config.name}", "enable.auto.commit": False,
            "isolation.level": "read_committed", "auto.offset.reset": "earliest",
        }))  # fmt: skip
        self.committed: dict[int, int] = {}
        self.ready = threading.Event()
        self._paused = False
        self._replay_done = False
        self._low: dict[int, int] = {}

    def _assign(self) -> list[TopicPartition]:
        meta = self.consumer.list_topics(self.topic, timeout=10)
        info = meta.topics.get(self.topic)
        if info is None or info.error is not None:
            raise KafkaException(f"topic {self.topic} not found (shoal topics create)")
        tps = [TopicPartition(self.topic, p) for p in sorted(info.partitions)]
        for tp in self._committed(tps):
            self.committed[tp.partition] = tp.offset if tp.offset >= 0 else 0
            if self.committed[tp.partition]:
                self._low[tp.partition] = self.consumer.get_watermark_offsets(tp, timeout=10)[0]
        self.consumer.assign([TopicPartition(self.topic, tp.partition, OFFSET_BEGINNING) for tp in tps])
        return tps

    def _committed(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        """The group's committed offsets, waiting out a group coordinator that is still loading (a new
        group, a broker that just started): retriable errors are retried until ``stop`` or a minute."""
        deadline = time.monotonic() + 60
        while True:
            try:
                return self.consumer.committed(tps, timeout=10)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                retriable = isinstance(err, KafkaError) and (err.retriable() or err.code() in RETRY_CODES)
                if not retriable or time.monotonic() > deadline or self.stop.is_set():
                    raise
                log.info("%s: committed offsets not available yet (%s); retrying", self.config.name, err)
                time.sleep(0.5)

    def run(self) -> None:
        tps = self._assign()
        last_commit = time.monotonic()
        try:
            while not self.stop.is_set():
                for msg in self.consumer.consume(500, timeout=0.2):
                    if msg.error() is None:
                        self._take(msg)
                # Nothing goes out before the delivered part is rebuilt: a sighting changed by a new
                # message must count every detection of its window, some of which may still be ahead
                # in another partition's replay.
                if self._replayed(tps):
                    for share in self.outbox.step():
                        self.aggregator.settle(share)
                self._flow_control(tps)
                if time.monotonic() - last_commit >= COMMIT_SECONDS:
                    self._commit()
                    self.aggregator.expire()
                    last_commit = time.monotonic()
            if self._replayed(tps):
                for share in self.outbox.step():
                    self.aggregator.settle(share)
            self._commit()
        finally:
            self.consumer.close()
            self.destination.close()

    def _replayed(self, tps: list[TopicPartition]) -> bool:
        if self._replay_done:
            return True

        def caught_up(tp: TopicPartition) -> bool:
            committed = self.committed.get(tp.partition, 0)
            if tp.offset < 0:  # nothing read yet: done only if what was delivered is gone (compacted)
                return committed <= self._low.get(tp.partition, 0)
            return tp.offset >= committed

        self._replay_done = all(caught_up(tp) for tp in self.consumer.position(tps))
        if self._replay_done:
            self.ready.set()
        return self._replay_done

    def _take(self, msg: Any) -> None:
        name, partition, offset = self.config.name, msg.partition(), msg.offset()
        if msg.value() is None:  # a compaction tombstone: nothing to share
            return
        try:
            detection = decode_json(msg.value(), REQUIRED)
        except MessageError as exc:
            self.metrics.inputs.labels(name, "bad").inc()
            log.warning("%s: detection at %s/%d@%d skipped: %s", name, self.topic, partition, offset, exc)
            return
        stats = self.aggregator.stats
        before = (stats.stale_versions, stats.too_old, stats.unshareable)
        replay = offset < self.committed.get(partition, 0)
        try:
            shares = self.aggregator.add(detection, partition, offset, replay=replay)
        except (KeyError, TypeError, ValueError, STIXError) as exc:
            self.metrics.inputs.labels(name, "bad").inc()
            log.warning(
                "%s: detection %s skipped: %s: %s", name, detection.get("id"), type(exc).__name__, exc
            )
            return
        after = (stats.stale_versions, stats.too_old, stats.unshareable)
        outcome = next((o for o, b, a in zip(("stale", "too_old", "unshareable"), before, after, strict=True) if a > b),
                       "used")  # fmt: skip
        self.metrics.inputs.labels(name, outcome).inc()
        for share in shares:
            self.outbox.offer(share)

    def _flow_control(self, tps: list[TopicPartition]) -> None:
        waiting = len(self.outbox.pending)
        # Never paused while replaying: the replay must finish before anything is sent.
        if waiting > MAX_PENDING and not self._paused and self._replay_done:
            self.consumer.pause(self.consumer.assignment())
            self._paused = True
        elif waiting < MAX_PENDING // 2 and self._paused:
            self.consumer.resume(self.consumer.assignment())
            self._paused = False

    def _commit(self) -> None:
        moved = [TopicPartition(self.topic, p, o) for p, o in self.aggregator.commit_offsets().items()
                 if o > self.committed.get(p, 0)]  # fmt: skip
        if not moved:
            return
        try:
            self.consumer.commit(offsets=moved, asynchronous=False)
        except KafkaException as exc:
            log.warning("%s: offset commit failed (%s); retried", self.config.name, exc)
            return
        for tp in moved:
            self.committed[tp.partition] = tp.offset
