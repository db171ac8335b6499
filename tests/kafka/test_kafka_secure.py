"""Shoal against a broker configured as production clusters are: SASL_SSL only (SCRAM-SHA-512, TLS
from a CA made by the test) and ACLs that give each role only its topics, group and transactional ids.
Every command works with its role's credentials (from the environment, or from the configuration
file); a wrong password, an untrusted certificate or a missing ACL ends in one clear line naming the
principal and the resource, quickly, without the password anywhere in the output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from demo_reference import expected_alerts, free_port
from kafka_helpers import ROOT, TOPIC_KINDS, stop, streams_config
from secure_broker import SecureBroker

from pipeline.runtime.replay import replay
from pipeline.samples import DEMO_INTEL, DEMO_TRAFFIC

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecureBroker, Path, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("secure")
    config, names = streams_config(tmp, flows_partitions=2)
    group = config.read_text().split('group = "')[1].split('"')[0]
    broker = SecureBroker(tmp / "broker", names, group)
    try:
        broker.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"could not start the SASL_SSL broker: {exc}")
    try:
        yield broker, config, names
    finally:
        broker.stop()


def shoal(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env}, check=False)  # fmt: skip


def spawn(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})  # fmt: skip


def read_alerts(broker: SecureBroker, topic: str, expected: int, timeout: float = 60) -> list[dict]:
    consumer = Consumer({**broker.client("admin"), "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed"})  # fmt: skip
    consumer.subscribe([topic])
    alerts: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(alerts) < expected:
            for msg in consumer.consume(num_messages=1000, timeout=0.3):
                assert msg.error() is None, msg.error()
                alerts.append(json.loads(msg.value()))
        for msg in consumer.consume(num_messages=1000, timeout=2):  # nothing more may follow
            alerts.append(json.loads(msg.value()))
    finally:
        consumer.close()
    return alerts


def one_line(res: subprocess.CompletedProcess[str], *secrets: str) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    for secret in secrets:
        assert secret not in res.stdout + res.stderr
    return lines[0]


@pytest.mark.peers
def test_every_role_works_with_its_own_credentials(secure) -> None:
    broker, config, names = secure
    res = shoal(broker.env("admin"), "topics", "create", "--kafka", broker.bootstrap, "--config", str(config))
    assert res.returncode == 0 and res.stdout.count(": created") == len(TOPIC_KINDS), res.stdout + res.stderr
    # The intel role's credentials from the configuration file's [client] section, not the environment.
    client = {k[len("SHOAL_KAFKA_") :].lower().replace("_", "."): v for k, v in broker.env("intel").items()}
    with_client = config.parent / "streams-with-client.toml"
    with_client.write_text(
        config.read_text() + "[client]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in client.items())
    )
    res = shoal(
        {}, "intel", "publish", "--kafka", broker.bootstrap, "--config", str(with_client), str(DEMO_INTEL)
    )
    assert res.returncode == 0 and "4 new" in res.stdout, res.stdout + res.stderr
    worker = spawn(broker.env("worker"), "detect", "--kafka", broker.bootstrap, "--config", str(config),
                   "--instance-id", "w0")  # fmt: skip
    collector = spawn(broker.env("collector"), "collect", "--listen", "127.0.0.1:0", "--kafka", broker.bootstrap,
                      "--kafka-topic", names["flows"])  # fmt: skip
    try:
        assert worker.stdout.readline().startswith("shoal detect: worker w0")
        port = int(collector.stdout.readline().rsplit(":", 1)[1])
        assert replay(DEMO_TRAFFIC, "127.0.0.1", {2055: port, 4739: port}) == 60
        want = expected_alerts()
        alerts = read_alerts(broker, names["alerts"], len(want))
    finally:
        worker_err = stop(worker)[1]
        collector_err = stop(collector)[1]
    got = [(a["src_addr"], a["dst_addr"], a["src_port"], a["dst_port"], a["side"]) for a in alerts]
    assert len(got) == len(set(got)) and set(got) == want
    for err in (worker_err, collector_err):  # no authorization or authentication trouble on the way
        assert "AUTHORIZATION" not in err and "authentication" not in err.lower(), err


@pytest.mark.parametrize(
    "command",
    [["topics", "create"], ["intel", "publish", str(DEMO_INTEL)], ["detect", "--duration", "20"],
     ["collect", "--listen", "127.0.0.1:0"]],
    ids=["topics", "intel", "detect", "collect"],
)  # fmt: skip
def test_wrong_password_is_one_clear_line(secure, command: list[str]) -> None:
    broker, config, names = secure
    wrong = "not-the-password-" + uuid.uuid4().hex[:6]
    args = [*command, "--kafka", broker.bootstrap]
    args += ["--kafka-topic", names["flows"]] if command[0] == "collect" else ["--config", str(config)]
    started = time.monotonic()
    res = shoal(broker.env("worker", password=wrong), *args, timeout=45)
    assert res.returncode == 1
    assert time.monotonic() - started < 30
    line = one_line(res, wrong, broker.passwords["worker"])
    assert f"shoal {command[0]}: Kafka at {broker.bootstrap}: authentication failed for User:worker" in line
    assert "invalid credentials" in line and "SCRAM-SHA-512" in line


def test_untrusted_certificate_is_one_clear_line(secure, tmp_path: Path) -> None:
    broker, config, _ = secure
    other_ca = tmp_path / "other-ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k"),
                    "-out", str(other_ca), "-days", "1", "-subj", "/CN=Someone else"], capture_output=True,
                   check=True, timeout=60)  # fmt: skip
    env = {**broker.env("admin"), "SHOAL_KAFKA_SSL_CA_LOCATION": str(other_ca)}
    res = shoal(env, "topics", "create", "--kafka", broker.bootstrap, "--config", str(config), timeout=45)
    assert res.returncode == 1
    line = one_line(res, broker.passwords["admin"])
    assert (
        f"Kafka at {broker.bootstrap}: TLS failed for User:admin" in line
        and "certificate verify failed" in line
    )


def test_missing_acl_is_one_clear_line_naming_principal_and_resource(secure) -> None:
    broker, config, names = secure
    res = shoal(broker.env("admin"), "topics", "create", "--kafka", broker.bootstrap, "--config", str(config))
    assert res.returncode == 0, res.stderr
    # The collector's user may only write flows: it can neither publish intel nor run a worker.
    res = shoal(broker.env("collector"), "intel", "publish", "--kafka", broker.bootstrap, "--config", str(config),
                str(DEMO_INTEL))  # fmt: skip
    assert res.returncode == 1
    assert one_line(res, broker.passwords["collector"]) == (
        f"shoal intel: Kafka denies User:collector on topic {names['indicators']} (TOPIC_AUTHORIZATION_FAILED): "
        "it needs an ACL allowing DESCRIBE and READ"
    )
    res = shoal(broker.env("collector"), "detect", "--kafka", broker.bootstrap, "--config", str(config),
                "--duration", "20")  # fmt: skip
    assert res.returncode == 1
    assert f"Kafka denies User:collector on topic {names['indicators']}" in one_line(res)
    # The intel user may read indicators but has no worker's transactional id: one line at start.
    res = shoal(broker.env("intel"), "detect", "--kafka", broker.bootstrap, "--config", str(config),
                "--instance-id", "w9", "--duration", "30", timeout=60)  # fmt: skip
    assert res.returncode == 1
    group = config.read_text().split('group = "')[1].split('"')[0]
    assert one_line(res, broker.passwords["intel"]) == (
        f"shoal detect: Kafka denies User:intel on transactional id shoal-detect.{group}.w9 "
        "(TRANSACTIONAL_ID_AUTHORIZATION_FAILED): it needs an ACL allowing WRITE and DESCRIBE"
    )


def test_collector_without_write_acl_says_so_once_and_is_not_ready(secure) -> None:
    """A long-running collector keeps running (it may archive to Parquet too), logs the denial once
    and reports it on /readyz."""
    broker, _config, names = secure
    metrics = f"127.0.0.1:{free_port()}"
    collector = spawn(broker.env("worker"), "collect", "--listen", "127.0.0.1:0", "--kafka", broker.bootstrap,
                      "--kafka-topic", names["flows"], "--metrics", metrics)  # fmt: skip
    try:
        port = int(collector.stdout.readline().rsplit(":", 1)[1])
        body = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "denies" not in body:
            replay(DEMO_TRAFFIC, "127.0.0.1", {2055: port, 4739: port})
            time.sleep(1)
            try:
                urllib.request.urlopen(f"http://{metrics}/readyz", timeout=5)
            except urllib.error.HTTPError as exc:
                body = exc.read().decode()
        assert collector.poll() is None
    finally:
        _out, err = stop(collector)
    assert f"Kafka denies User:worker on topic {names['flows']} (TOPIC_AUTHORIZATION_FAILED)" in body
    assert err.count("Kafka denies User:worker") == 1, err
    assert broker.passwords["worker"] not in err
