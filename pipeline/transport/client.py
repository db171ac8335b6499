"""How every Kafka client Shoal makes reaches the cluster: bootstrap servers, librdkafka settings from
a configuration file, and ``SHOAL_KAFKA_<KEY>`` environment variables on top (for secrets)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PREFIX = "SHOAL_KAFKA_"


class _ReportedElsewhere(logging.Filter):
    """Drops librdkafka's lines about refused credentials, certificates and ACLs: Shoal reports those
    itself in one line (pipeline.transport.access), where librdkafka repeats them on every retry."""

    MARKERS = (
        "AUTHORIZATION_FAILED",
        "authorization failed",
        "SASL authentication error",
        "certificate verify failed",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(marker in message for marker in self.MARKERS)


LIBRDKAFKA_LOG = logging.getLogger("shoal.kafka.librdkafka")
"""librdkafka's own log lines, through Python logging (served by the clients' poll and consume)."""
LIBRDKAFKA_LOG.addFilter(_ReportedElsewhere())


def client_settings(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """librdkafka settings from the environment: SHOAL_KAFKA_<KEY> with '_' for '.', for example
    SHOAL_KAFKA_SECURITY_PROTOCOL=SASL_SSL or SHOAL_KAFKA_SASL_PASSWORD=... — credentials never go
    on the command line (or into shell history)."""
    env = os.environ if environ is None else environ
    return {k[len(PREFIX) :].lower().replace("_", "."): v for k, v in env.items() if k.startswith(PREFIX)}


@dataclass(frozen=True)
class KafkaConnection:
    bootstrap: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    """librdkafka settings from a configuration file (``security.protocol``, ``ssl.ca.location``...)."""

    def config(self, **defaults: Any) -> dict[str, Any]:
        """Shoal's ``defaults`` for one client, then the file's settings, then the environment's."""
        return {"bootstrap.servers": self.bootstrap, "log_level": 3, "logger": LIBRDKAFKA_LOG, **defaults,
                **self.settings, **client_settings()}  # fmt: skip


def connection(kafka: KafkaConnection | str) -> KafkaConnection:
    return kafka if isinstance(kafka, KafkaConnection) else KafkaConnection(kafka)
