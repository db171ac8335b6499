"""A real Apache Kafka broker (KRaft, single node, loopback) for the whole test session."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class Broker:
    def __init__(self, state: Path) -> None:
        self.env = {
            **os.environ,
            "SHOAL_KAFKA_DIR": str(state),
            "PYTHON": str(ROOT / ".venv" / "bin" / "python"),
        }
        self.bootstrap = ""

    def _run(self, action: str) -> str:
        res = subprocess.run([str(ROOT / "scripts" / "kafka.sh"), action], env=self.env, capture_output=True,
                             text=True, timeout=180, check=False)  # fmt: skip
        if res.returncode:
            raise RuntimeError(f"kafka.sh {action} failed: {res.stderr[-2000:]}")
        return res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""

    def start(self) -> str:
        self.bootstrap = self._run("start")
        return self.bootstrap

    def stop(self) -> None:
        self._run("stop")


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = Broker(tmp_path_factory.mktemp("kafka"))
    try:
        broker.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"could not start the Kafka broker: {exc}")
    yield broker
    broker.stop()
