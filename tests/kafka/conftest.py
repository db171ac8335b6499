"""A real Apache Kafka broker (KRaft, single node, loopback) for the whole test session."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from kafka_helpers import Broker


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = Broker(tmp_path_factory.mktemp("kafka"))
    try:
        broker.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"could not start the Kafka broker: {exc}")
    yield broker
    broker.stop()
