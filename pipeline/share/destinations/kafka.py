"""The ``sightings`` topic for operators' own consumers: one STIX object per message, key = its id
(compacted: the latest version of each object is what a reader keeps), header ``shoal-schema: stix/2.1``.
This network's Identity and the TLP marking definitions go out once per process, before the first share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from pipeline.share.destinations.base import DeliveryError, Share, ShareContext
from pipeline.share.destinations.stix_json import dumps, share_payload
from pipeline.share.policy import DestinationConfig
from pipeline.transport.client import KafkaConnection

HEADERS = [("shoal-schema", b"stix/2.1")]


class KafkaDestination:
    def __init__(self, config: DestinationConfig, context: ShareContext, kafka: KafkaConnection) -> None:
        self.name = config.name
        self.topic = config.topic
        self.timeout = config.timeout_seconds
        self.context = context
        self._context_sent = False
        self.producer = Producer(kafka.config(**{"enable.idempotence": True, "acks": "all", "linger.ms": 20}))

    def payload(self, share: Share) -> str:
        return share_payload(share)

    def send(self, shares: Sequence[Share]) -> None:
        errors: dict[str, str] = {}

        def report(share_id: str) -> Any:
            def on_delivery(err: KafkaError | None, _msg: Any) -> None:
                if err is not None:
                    errors[share_id] = err.str()

            return on_delivery

        context = [] if self._context_sent else [self.context.identity, *self.context.markings.values()]
        try:
            for obj in context:
                self.producer.produce(self.topic, dumps(obj).encode(), obj["id"].encode(), headers=HEADERS,
                                      on_delivery=report("context"))  # fmt: skip
            for share in shares:
                for obj in share.objects:
                    self.producer.produce(self.topic, dumps(obj).encode(), obj["id"].encode(), headers=HEADERS,
                                          on_delivery=report(share.id))  # fmt: skip
        except (BufferError, KafkaException) as exc:
            raise DeliveryError(f"{self.name}: cannot produce to {self.topic}: {exc}") from None
        left = self.producer.flush(self.timeout)
        if left:
            raise DeliveryError(f"{self.name}: {left} messages not acknowledged within {self.timeout:g}s")
        if errors:
            failed = {s for s in errors if s != "context"} or None
            raise DeliveryError(
                f"{self.name}: {next(iter(errors.values()))}", None if "context" in errors else failed
            )
        self._context_sent = True

    def close(self) -> None:
        self.producer.flush(min(self.timeout, 5.0))
