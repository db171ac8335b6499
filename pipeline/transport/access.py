"""Credentials, certificates and ACLs the cluster refuses, as one clear line instead of a retry storm.

librdkafka treats a wrong password or an untrusted certificate like a broker that is down: it logs the
failure and reconnects every few hundred milliseconds, forever. :func:`preflight` connects once before
a command builds its clients and turns those failures into :class:`KafkaAccessError` (the CLI prints it
as one line and exits 1). Authorization failures found later (a missing ACL) are raised the same way
by the code that meets them, through :func:`denied`. Messages name the principal and the resource,
never a secret: librdkafka's texts carry no password, and Shoal adds only the user name.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from pipeline.transport.client import KafkaConnection, connection

FATAL_AT_CONNECT = {KafkaError._AUTHENTICATION: "authentication failed", KafkaError._SSL: "TLS failed"}
AUTHORIZATION = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "group",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "cluster",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional id",
}
_quiet = logging.getLogger("shoal.kafka.preflight")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False  # the failures it would log are what KafkaAccessError reports, once


class KafkaAccessError(Exception):
    """The cluster refuses this client's credentials, certificate or permissions: retrying cannot
    help, so the command stops with this one-line message."""


def principal(kafka: KafkaConnection | str) -> str:
    """``User:NAME`` as the brokers' ACLs name it (``User:ANONYMOUS`` without SASL)."""
    name = connection(kafka).config().get("sasl.username")
    return f"User:{name}" if name else "User:ANONYMOUS"


def _clean(text: str) -> str:
    """librdkafka's text without its broker-URL prefix and timing suffix."""
    text = re.sub(r"^\S+://\S+?: ", "", text)
    return re.sub(r" \(after \d+ms in state \w+\)$", "", text)


def preflight(kafka: KafkaConnection | str, timeout: float = 15.0) -> None:
    """Connect once; raise :class:`KafkaAccessError` when the cluster refuses the credentials or the
    TLS handshake fails. A cluster that does not answer at all is left to the command (its clients
    retry: brokers come back)."""
    kafka = connection(kafka)
    errors: list[KafkaError] = []
    try:
        producer = Producer(kafka.config(error_cb=errors.append, logger=_quiet, log_level=3))
    except KafkaException:
        return  # a setting librdkafka rejects: the command's own client reports it, in its own words
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            producer.list_topics(timeout=1)
            return
        except KafkaException:
            pass
        producer.poll(0)  # serves error_cb
        for err in errors:
            if err.code() in FATAL_AT_CONNECT:
                raise KafkaAccessError(
                    f"Kafka at {kafka.bootstrap}: {FATAL_AT_CONNECT[err.code()]} for {principal(kafka)}: "
                    f"{_clean(err.str())}"
                )
        if any(err.code() == KafkaError._ALL_BROKERS_DOWN for err in errors):
            return  # unreachable rather than refusing: the command's own clients keep trying


def denied(
    kafka: KafkaConnection | str, err: KafkaError, resource: str, operations: str
) -> KafkaAccessError | None:
    """The error to raise when ``err`` is an authorization failure on ``resource`` (else None)."""
    kind = AUTHORIZATION.get(err.code())
    if kind is None:
        return None
    return KafkaAccessError(
        f"Kafka denies {principal(kafka)} on {kind} {resource} ({err.name()}): it needs an ACL allowing {operations}"
    )


def is_denied(err: Any) -> bool:
    return isinstance(err, KafkaError) and err.code() in AUTHORIZATION
