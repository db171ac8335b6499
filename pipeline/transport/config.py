"""Kafka topics and detection-worker settings as one typed tree.

Precedence: defaults < TOML file (``--config``) < ``SHOAL_STREAMS__SECTION__KEY`` environment variables
(for example ``SHOAL_STREAMS__TOPICS__FLOWS__PARTITIONS=24``) < command-line options. Client settings
(TLS, SASL, credentials) are not here: they come from ``SHOAL_KAFKA_<KEY>`` (see ``client.py``).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, load_tree
from pipeline.transport.client import KafkaConnection

ENV_PREFIX = "SHOAL_STREAMS__"
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicConfig:
    name: str = ""
    partitions: int = -1
    """-1: the broker's ``num.partitions``."""
    replication: int = -1
    """-1: the broker's ``default.replication.factor`` (use 3 on a production cluster)."""
    retention_ms: int = 0
    """0: the broker's default retention."""
    compact: bool = False


@dataclass(frozen=True)
class FlowsTopic(TopicConfig):
    name: str = "shoal.flows.v1"
    partitions: int = 6
    retention_ms: int = DAY_MS


@dataclass(frozen=True)
class AlertsTopic(TopicConfig):
    name: str = "shoal.alerts.v1"
    partitions: int = 3
    retention_ms: int = 30 * DAY_MS


@dataclass(frozen=True)
class IndicatorsTopic(TopicConfig):
    name: str = "shoal.indicators.v2"
    partitions: int = 1
    """One partition keeps every change in one order and makes a full read cheap."""
    compact: bool = True


@dataclass(frozen=True)
class PartialsTopic(TopicConfig):
    name: str = "shoal.partials.v1"
    partitions: int = 6
    """Keyed by detection group (indicator id, or scanner and port): one group's evidence meets in one
    partition, whichever worker saw it. The confirmation app's instances share these partitions."""
    retention_ms: int = DAY_MS


@dataclass(frozen=True)
class DetectionsTopic(TopicConfig):
    name: str = "shoal.detections.v1"
    partitions: int = 3
    retention_ms: int = 30 * DAY_MS
    """With compaction: the latest version of each detection, kept for 30 days."""
    compact: bool = True


@dataclass(frozen=True)
class FeedbackTopic(TopicConfig):
    name: str = "shoal.feedback.v1"
    partitions: int = 1
    """Low volume, read whole by every confirmation instance (suppressions apply everywhere)."""
    compact: bool = True


@dataclass(frozen=True)
class SightingsTopic(TopicConfig):
    name: str = "shoal.sightings.v1"
    partitions: int = 3
    retention_ms: int = 30 * DAY_MS
    """STIX objects this network shares (key: object id): with compaction, the latest version of each."""
    compact: bool = True


@dataclass(frozen=True)
class TopicsConfig:
    flows: FlowsTopic = field(default_factory=FlowsTopic)
    alerts: AlertsTopic = field(default_factory=AlertsTopic)
    indicators: IndicatorsTopic = field(default_factory=IndicatorsTopic)
    partials: PartialsTopic = field(default_factory=PartialsTopic)
    detections: DetectionsTopic = field(default_factory=DetectionsTopic)
    feedback: FeedbackTopic = field(default_factory=FeedbackTopic)
    sightings: SightingsTopic = field(default_factory=SightingsTopic)

    def all(self) -> list[TopicConfig]:
        return [self.flows, self.alerts, self.indicators, self.partials, self.detections, self.feedback,
                self.sightings]  # fmt: skip


@dataclass(frozen=True)
class DetectConfig:
    group: str = "shoal-detect"
    """Consumer group: workers in one group share the flows topic's partitions."""
    instance_id: str = ""
    """Stable identity of this worker (static group membership and transactional id); default: the
    host name, which is stable for a Kubernetes StatefulSet pod. Give each worker on one host its own."""
    max_messages: int = 64
    """Flow messages consumed, matched and committed per transaction."""
    poll_seconds: float = 0.2
    session_timeout_ms: int = 15_000
    transaction_timeout_ms: int = 30_000
    intel_settle_seconds: float = 0.3
    """After an indicators-topic change, wait this long for more before rebuilding the index."""
    partials: bool = True
    """Send each batch's pre-aggregated evidence to the partials topic (for ``shoal confirm``), in the
    same transaction as its alerts and offsets."""

    def identity(self) -> str:
        return self.instance_id or socket.gethostname()


@dataclass(frozen=True)
class ConfirmConfig:
    group: str = "shoal-confirm"
    """The confirmation app's consumer group (and Faust app id: it names the changelog topic)."""
    instance_id: str = ""
    """Stable identity (static group membership: a restarted instance takes its partitions back in
    seconds, not after a session timeout); default: the host name."""
    tick_seconds: float = 0.5
    """How often each partition's groups are checked for due emissions and closed windows."""
    session_timeout_seconds: float = 10.0

    def identity(self) -> str:
        return self.instance_id or socket.gethostname()


@dataclass(frozen=True)
class ShareConfig:
    group: str = "shoal-share"
    """Consumer-group prefix: each destination reads the detections topic as ``<group>.<destination>``."""


@dataclass(frozen=True)
class StreamsConfig:
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig)
    share: ShareConfig = field(default_factory=ShareConfig)
    client: Mapping[str, Any] = field(default_factory=dict)
    """librdkafka settings for every client (``security.protocol``, ``sasl.mechanism``,
    ``ssl.ca.location``...); ``SHOAL_KAFKA_<KEY>`` environment variables override them (secrets)."""

    def connection(self, bootstrap: str) -> KafkaConnection:
        return KafkaConnection(bootstrap, dict(self.client))

    def validate(self) -> StreamsConfig:
        for topic in self.topics.all():
            if not topic.name:
                raise ConfigError("topics: every topic needs a name")
            if topic.partitions == 0 or topic.partitions < -1:
                raise ConfigError(f"topics: {topic.name}: partitions must be >= 1 (or -1)")
            if topic.replication == 0 or topic.replication < -1:
                raise ConfigError(f"topics: {topic.name}: replication must be >= 1 (or -1)")
        d = self.detect
        if not d.group or d.max_messages < 1 or d.poll_seconds <= 0 or d.intel_settle_seconds < 0:
            raise ConfigError("detect: group must be set, max_messages >= 1, poll_seconds > 0")
        c = self.confirm
        if not c.group or c.tick_seconds <= 0 or c.session_timeout_seconds <= 0:
            raise ConfigError("confirm: group must be set, tick_seconds > 0, session_timeout_seconds > 0")
        if not self.share.group:
            raise ConfigError("share: group must be set")
        return self


def load_streams_config(
    path: str | Path | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> StreamsConfig:
    return load_tree(StreamsConfig, path, ENV_PREFIX, environ, overrides).validate()
