"""``shoal confirm`` as a Faust app: partials from the matcher workers merged into detection groups
held in a table backed by a changelog topic on the broker, detections out to the compacted
detections topic, analysts' feedback applied.

How it stays exact across kill -9 and rebalances (measured on faust-streaming, see
docs/detections.md): processing is at-least-once, reading only committed partials, and each group's
table value carries the offset of the last partial applied to it, so a redelivered partial is skipped;
one table write per partial. Table writes must happen while a message of the same partition is being
processed, so windows are closed by *tick* messages that each instance sends to the partials
partitions it owns every ``tick_seconds``; handling a tick emits the partition's due detections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

from detectors.detections import iso_ms
from pipeline.confirm import kafka_transport
from pipeline.confirm.engine import Confirmer, Verdicts, now_ms
from pipeline.confirm.settings import DetectionSettings
from pipeline.confirm.stage import DetectionMetrics
from pipeline.metrics import NAMESPACE
from pipeline.transport.config import StreamsConfig
from pipeline.transport.detections import (
    DETECTION_SCHEMA,
    SCHEMA_HEADER,
    VERDICTS,
    MessageError,
    decode_json,
    decode_partials,
    encode_detection,
)

log = logging.getLogger(__name__)
TICK_HEADER = "shoal-tick"
POSITIONS_PER_MESSAGE = 1 << 16
"""A partial's position: its message's offset times this, plus its index in the message."""
PARTIAL_FIELDS = ("kind", "key", "window_start", "window_seconds", "hosts", "exporters", "indicator", "scan")
FEEDBACK_FIELDS = ("kind", "key", "internal_host", "window_start", "verdict", "at", "at_ms", "detection")


class ConfirmMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        kw: dict[str, Any] = {"namespace": NAMESPACE, "registry": registry}
        self.partials = Counter("confirm_partials", "Partials read, by outcome (applied, duplicate: a "
                                "redelivery skipped by offset, late: its window had closed, bad)", ["outcome"], **kw)  # fmt: skip
        self.feedback = Counter("confirm_feedback", "Analyst verdicts applied, by verdict", ["verdict"], **kw)
        self.lag = Gauge("confirm_event_lag_seconds",
                         "Wall clock minus the newest flow time merged (how far confirmation trails the flows)", **kw)  # fmt: skip


def build_app(
    bootstrap: str,
    streams: StreamsConfig,
    settings: DetectionSettings,
    registry: CollectorRegistry,
    client_config: dict[str, Any] | None = None,
) -> faust.App:
    kafka_transport.register()
    topics, conf = streams.topics, streams.confirm
    metrics = ConfirmMetrics(registry)
    app = faust.App(
        conf.group,
        broker=f"{kafka_transport.SCHEME}://{bootstrap}",
        env_prefix="SHOAL_FAUST_",  # unprefixed WEB_PORT, BROKER_URL... must not reach the app
        store="memory://",  # state is restored from the changelog topic on start
        value_serializer="raw",
        key_serializer="raw",
        processing_guarantee="at_least_once",
        consumer_group_instance_id=conf.identity(),
        broker_session_timeout=conf.session_timeout_seconds,
        broker_heartbeat_interval=min(3.0, conf.session_timeout_seconds / 3),
        table_standby_replicas=1,
        topic_partitions=topics.partials.partitions if topics.partials.partitions > 0 else 6,
        topic_replication_factor=topics.partials.replication if topics.partials.replication > 0 else 1,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
    )
    partials_topic = app.topic(topics.partials.name, key_type=bytes, value_type=bytes, internal=False)
    detections_topic = app.topic(topics.detections.name, key_type=bytes, value_type=bytes, internal=False)
    feedback_topic = app.topic(topics.feedback.name, key_type=bytes, value_type=bytes, internal=False)
    table = app.Table("groups", default=None, partitions=app.conf.topic_partitions,
                      schema=faust.Schema(key_serializer="json", value_serializer="json"))  # fmt: skip
    verdicts = Verdicts(settings.detections.suppress_seconds)
    confirmer = Confirmer(settings.detections, table, verdicts)
    headers = [(SCHEMA_HEADER, DETECTION_SCHEMA)]
    detection_metrics = DetectionMetrics(registry, lambda: len(table))

    async def emit(detections: list[dict[str, Any]]) -> None:
        for d in detections:
            key, value = encode_detection(d)
            await detections_topic.send(key=key, value=value, headers=headers)
        detection_metrics.emitted(detections)

    def keys_of(partition: int) -> list[str]:
        return [k for k, v in table.items() if v is not None and v.get("p") == partition]

    @app.agent(partials_topic)
    async def confirm(stream: Any) -> Any:
        async for event in stream.events():
            message = event.message
            if any(k == TICK_HEADER for k, _ in message.headers or ()):
                await emit(confirmer.tick(keys_of(message.partition)))
                continue
            try:
                partials = decode_partials(message.value)
            except MessageError as exc:
                metrics.partials.labels("bad").inc()
                log.warning(
                    "skipped message %s[%d]@%d: %s", message.topic, message.partition, message.offset, exc
                )
                continue
            detections: list[dict[str, Any]] = []
            newest = 0
            for i, partial in enumerate(partials):
                # Positions within the message keep "one state write per partial, skipped when seen".
                position = message.offset * POSITIONS_PER_MESSAGE + i
                before = (confirmer.duplicates, confirmer.late)
                try:
                    if not isinstance(partial, dict) or any(k not in partial for k in PARTIAL_FIELDS):
                        raise MessageError("not a partial object")
                    detections += confirmer.add(partial, offset=position, extra={"p": message.partition})
                except (MessageError, KeyError, TypeError, ValueError) as exc:
                    metrics.partials.labels("bad").inc()
                    log.warning("skipped partial %d of %s[%d]@%d: %s", i, message.topic, message.partition,
                                message.offset, exc)  # fmt: skip
                    continue
                outcome = ("duplicate" if confirmer.duplicates > before[0]
                           else "late" if confirmer.late > before[1] else "applied")  # fmt: skip
                metrics.partials.labels(outcome).inc()
                if outcome == "applied":
                    newest = max(newest, *(h["last_seen"] for h in partial["hosts"]))
            if newest:
                metrics.lag.set(max(0.0, time.time() - newest / 1000))
            await emit(detections)

    @app.agent(feedback_topic)
    async def closed_window_feedback(stream: Any) -> Any:
        """One instance (the feedback topic has one partition) re-issues detections whose window had
        closed with the analyst's verdict; open ones take it from their owner at its next tick."""
        async for value in stream:
            try:
                feedback = decode_json(value, FEEDBACK_FIELDS)
            except MessageError:
                continue
            record = feedback.get("detection")
            if isinstance(record, dict) and record.get("final"):
                state = "false_positive" if feedback["verdict"] == "false_positive" else "confirmed"
                updated = dict(record, state=state, rule="analyst", updated=iso_ms(now_ms()),
                               feedback={k: feedback.get(k) for k in ("verdict", "reason", "analyst", "at")})  # fmt: skip
                await emit([updated])

    @app.timer(conf.tick_seconds)
    async def send_ticks() -> None:
        owned = [tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topics.partials.name]
        for partition in owned:
            await partials_topic.send(
                key=b"tick", value=b"", partition=partition, headers=[(TICK_HEADER, b"1")]
            )

    @app.task
    async def read_feedback() -> None:
        """Every instance reads the whole feedback topic (verdicts apply to whichever partition)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                    isolation_level="read_committed", **(client_config or {}))  # fmt: skip
        await consumer.start()
        app.shoal_running = True  # type: ignore[attr-defined]
        try:
            partitions = consumer.partitions_for_topic(topics.feedback.name) or {0}
            consumer.assign([TopicPartition(topics.feedback.name, p) for p in partitions])
            await consumer.seek_to_beginning()
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for messages in batches.values():
                    for m in messages:
                        try:
                            feedback = decode_json(m.value, FEEDBACK_FIELDS)
                            if feedback["verdict"] not in VERDICTS:
                                raise MessageError(f"unknown verdict {str(feedback['verdict'])[:40]!r}")
                            confirmer.feedback(feedback)
                        except (MessageError, KeyError, TypeError, ValueError) as exc:
                            log.warning("skipped feedback message @%d: %s", m.offset, exc)
                            continue
                        metrics.feedback.labels(feedback["verdict"]).inc()
        except asyncio.CancelledError:
            raise
        finally:
            await consumer.stop()

    app.shoal_confirmer = confirmer  # type: ignore[attr-defined]
    app.shoal_running = False  # type: ignore[attr-defined]
    return app


def feedback_message(
    detection: dict[str, Any], verdict: str, reason: str | None, analyst: str | None
) -> dict[str, Any]:
    """The feedback topic's record for a verdict on ``detection`` (its latest version)."""
    at = now_ms()
    window_start = datetime.fromisoformat(detection["window_start"].replace("Z", "+00:00"))
    return {
        "detection_id": detection["id"], "kind": detection["kind"], "key": detection["key"],
        "internal_host": detection["internal_host"], "window_start": int(window_start.timestamp() * 1000),
        "verdict": verdict, "reason": reason, "analyst": analyst, "at": iso_ms(at), "at_ms": at,
        "detection": detection,
    }  # fmt: skip
