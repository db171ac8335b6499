"""Faust's aiokafka transport, reading committed data only.

Partials are written by the matcher workers inside Kafka transactions; a worker killed mid-batch
leaves an aborted transaction whose partials must never count. Faust reads ``read_committed`` only
in its exactly-once mode, which is unreliable (faust-streaming #323, #517), so the confirmation app
runs at-least-once (made exact by offsets kept in the table values) over this transport instead.
"""

from __future__ import annotations

from typing import Any

from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

SCHEME = "shoalkafka"


class ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = "read_committed"  # aiokafka hands it to its fetcher at start()
        return consumer


class ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class ReadCommittedTransport(faust_aiokafka.Transport):
    Consumer = ReadCommittedConsumer


def register() -> None:
    """Make ``shoalkafka://host:port`` broker URLs use this transport."""
    drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:ReadCommittedTransport"
