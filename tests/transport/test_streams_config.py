"""Kafka-side configuration: topic and worker settings from TOML and environment, and librdkafka
settings from a file overridden by SHOAL_KAFKA_* variables (secrets stay out of files and argv)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError
from pipeline.transport.client import KafkaConnection
from pipeline.transport.config import load_streams_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_name_versioned_topics_and_a_compacted_indicators_topic() -> None:
    cfg = load_streams_config(environ={})
    assert [t.name for t in cfg.topics.all()] == [
        "shoal.flows.v1", "shoal.alerts.v1", "shoal.indicators.v2", "shoal.partials.v1", "shoal.detections.v1",
        "shoal.feedback.v1", "shoal.sightings.v1",
    ]  # fmt: skip
    assert cfg.topics.indicators.compact and not cfg.topics.flows.compact
    assert cfg.topics.detections.compact and cfg.topics.feedback.compact and not cfg.topics.partials.compact
    assert cfg.topics.sightings.compact and cfg.share.group == "shoal-share"
    assert cfg.detect.group == "shoal-detect" and cfg.detect.identity()  # host name by default


def test_file_then_environment_then_options(tmp_path: Path) -> None:
    path = tmp_path / "streams.toml"
    path.write_text('[topics.flows]\npartitions = 12\nname = "nren.flows"\n[detect]\ngroup = "soc"\n'
                    '[client]\n"security.protocol" = "SSL"\n"ssl.ca.location" = "/etc/ca.pem"\n')  # fmt: skip
    env = {"SHOAL_STREAMS__TOPICS__FLOWS__PARTITIONS": "24"}
    cfg = load_streams_config(path, environ=env, overrides={"detect": {"instance_id": "w7"}})
    assert cfg.topics.flows.partitions == 24 and cfg.topics.flows.name == "nren.flows"
    assert cfg.topics.flows.retention_ms == 24 * 3600 * 1000  # untouched defaults survive
    assert cfg.detect.group == "soc" and cfg.detect.identity() == "w7"
    assert dict(cfg.client) == {"security.protocol": "SSL", "ssl.ca.location": "/etc/ca.pem"}


@pytest.mark.parametrize(
    ("text", "message"),
    [('[topics.flows]\npartitions = 0\n', "partitions"), ('[topics.flows]\nparts = 3\n', "unknown setting"),
     ('[detect]\nmax_messages = "many"\n', "expected int")],
)  # fmt: skip
def test_bad_configuration_is_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_streams_config(path, environ={})


def test_client_settings_defaults_then_file_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_KAFKA_SASL_PASSWORD", "from-env")
    monkeypatch.setenv("SHOAL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    conn = KafkaConnection(
        "k1:9092", {"security.protocol": "SSL", "linger.ms": 100, "sasl.username": "shoal"}
    )
    config = conn.config(**{"linger.ms": 5, "acks": "all"})
    assert config["bootstrap.servers"] == "k1:9092"
    assert config["linger.ms"] == 100  # the file tunes Shoal's default
    assert config["security.protocol"] == "SASL_SSL"  # the environment wins over the file
    assert (
        config["sasl.password"] == "from-env"
        and config["sasl.username"] == "shoal"
        and config["acks"] == "all"
    )


def test_a_bad_client_setting_fails_cleanly_before_any_work(tmp_path: Path) -> None:
    path = tmp_path / "streams.toml"
    path.write_text('[client]\n"no.such.setting" = "1"\n')
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "topics", "create", "--kafka", "127.0.0.1:1",
                          "--config", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert res.returncode == 1
    assert "no.such.setting" in res.stdout + res.stderr and "Traceback" not in res.stderr


def test_variables_that_are_no_librdkafka_setting_are_left_out() -> None:
    """Issue 15, item 19: SHOAL_KAFKA_DIR is the broker script's state directory; read as a client
    setting ("dir") it made every Kafka client fail. librdkafka itself says which names it knows."""
    from confluent_kafka import Producer

    from pipeline.transport.client import client_settings

    env = {
        "SHOAL_KAFKA_DIR": "/tmp/kafka-run",
        "SHOAL_KAFKA_SASL_USERNAME": "shoal",
        "SHOAL_KAFKA_LINGER_MS": "7",
    }
    settings = client_settings(env)
    assert settings == {"sasl.username": "shoal", "linger.ms": "7"}
    Producer({"log_level": 0, **settings})  # accepted by librdkafka


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_broker_is_one_clear_message() -> None:
    """Issue 15, item 19: no librdkafka flood (~580 lines in 30 s), no traceback, a message that
    names the broker, even in a shell that exported the broker script's SHOAL_KAFKA_DIR."""
    import os

    env = {**os.environ, "SHOAL_KAFKA_DIR": "/tmp/kafka-run"}
    bootstrap = f"127.0.0.1:{_closed_port()}"
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "topics", "create", "--kafka", bootstrap],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, env=env)  # fmt: skip
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"no Kafka broker at {bootstrap} answered" in res.stderr
    assert len(res.stderr.splitlines()) <= 5, res.stderr[-2000:]
    intel = ROOT / "pipeline" / "samples" / "demo-intel.json"
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "intel", "publish", "--kafka", bootstrap, str(intel)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, env=env)  # fmt: skip
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "failed" in res.stdout + res.stderr
    assert len(res.stderr.splitlines()) <= 5, res.stderr[-2000:]


def test_collector_kafka_table_reaches_the_sink_settings(tmp_path: Path) -> None:
    from pipeline.collector.config import load_config

    path = tmp_path / "collector.toml"
    path.write_text('[receive]\nlisten = ["127.0.0.1:2055"]\n[kafka]\n"security.protocol" = "SSL"\n')
    assert dict(load_config(path, environ={}).kafka) == {"security.protocol": "SSL"}
