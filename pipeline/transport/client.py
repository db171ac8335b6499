"""How every Kafka client Shoal makes reaches the cluster: bootstrap servers, librdkafka settings from
a configuration file, and ``SHOAL_KAFKA_<KEY>`` environment variables on top (for secrets)."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PREFIX = "SHOAL_KAFKA_"
log = logging.getLogger(__name__)


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


def client_settings(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """librdkafka settings from the environment: SHOAL_KAFKA_<KEY> with '_' for '.', for example
    SHOAL_KAFKA_SECURITY_PROTOCOL=SASL_SSL or SHOAL_KAFKA_SASL_PASSWORD=... — credentials never go
    on the command line (or into shell history). A variable that names no librdkafka setting (the
    broker script's SHOAL_KAFKA_DIR, a typo) is left out with a warning: it must not make every
    Kafka client fail."""
    env = os.environ if environ is None else environ
    out = {}
    for name, value in env.items():
        if not name.startswith(PREFIX):
            continue
        key = name[len(PREFIX) :].lower().replace("_", ".")
        if _librdkafka_knows(key, value):
            out[key] = value
        elif name not in _warned:
            _warned.add(name)
            log.warning("%s is not a librdkafka setting (no property %r): ignored", name, key)
    return out


_known: dict[str, bool] = {}
_warned: set[str] = set()


def _librdkafka_knows(key: str, value: str) -> bool:
    """Whether librdkafka has a property ``key``: asked of librdkafka itself (a client configured
    with it alone, silenced, then dropped), once per key."""
    known = _known.get(key)
    if known is None:
        from confluent_kafka import KafkaException, Producer

        try:
            Producer({"log_level": 0, key: value})
            known = True
        except KafkaException as exc:
            known = "No such configuration property" not in str(exc)
        _known[key] = known
    return known


class _Repeats(logging.Filter):
    """librdkafka repeats a failing connection's error every few milliseconds while a broker is away
    (~580 lines in 30 s): each distinct message (numbers aside) passes once per ``every`` seconds."""

    def __init__(self, every: float = 30.0) -> None:
        super().__init__()
        self.every = every
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = re.sub(r"\d+", "#", record.getMessage())
        now = time.monotonic()
        if now - self._last.get(key, -self.every) < self.every:
            return False
        if len(self._last) > 1024:  # bounded, whatever the messages
            self._last.clear()
        self._last[key] = now
        return True


LIBRDKAFKA_LOG = logging.getLogger("shoal.librdkafka")
"""Every Kafka client Shoal makes logs librdkafka's lines through this logger (served by the clients'
poll and consume), not straight to stderr: refusals Shoal reports itself are dropped, other repeats
rate-limited."""
LIBRDKAFKA_LOG.addFilter(_ReportedElsewhere())
LIBRDKAFKA_LOG.addFilter(_Repeats())


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


class KafkaUnreachable(Exception):
    """No broker answered: the message says where and for how long Shoal tried."""


def check_reachable(kafka: KafkaConnection | str, timeout: float = 10.0) -> None:
    """Raise :class:`KafkaUnreachable` unless a broker answers a metadata request within ``timeout``:
    commands say so at once, instead of a client retrying (and logging) for its own timeouts."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    kafka = connection(kafka)
    try:
        AdminClient(kafka.config()).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnreachable(
            f"no Kafka broker at {kafka.bootstrap} answered within {timeout:g}s ({exc.args[0].str()})"
        ) from None


class BrokerProbe:
    """Readiness check "kafka reachable": a broker answers a metadata request for ``topic`` within
    ``timeout`` (raises if not). One admin client of its own, kept: run from a background thread
    (``Health.add(poll_every)``), it shares no client with the command's own loop, and a probe every
    few seconds opens no new connection."""

    def __init__(self, kafka: KafkaConnection | str, topic: str, timeout: float = 2.0) -> None:
        from confluent_kafka.admin import AdminClient

        self.admin = AdminClient(connection(kafka).config())
        self.topic = topic
        self.timeout = timeout

    def __call__(self) -> bool:
        self.admin.list_topics(self.topic, timeout=self.timeout)
        return True
