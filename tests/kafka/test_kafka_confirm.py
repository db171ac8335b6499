"""Confirmation over a real broker: workers' partials exactly once across kill -9, the Faust app's
counts exact across kill -9 and with two instances, aborted partials never counted, analysts'
feedback applied — each checked against what was put in."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
from confluent_kafka import Producer
from demo_reference import expected_hits, free_port
from kafka_helpers import (
    ROOT,
    demo_batch,
    flow_tuples,
    reader,
    scrape,
    setup_topics,
    shoal,
    start_worker,
    stop,
    streams_config,
)
from test_kafka_detect import produce_batches

from pipeline.samples import DEMO_DETECTIONS
from pipeline.schemas import schemas_dir
from pipeline.transport.config import PartialsTopic
from pipeline.transport.detections import PARTIAL_SCHEMA, SCHEMA_HEADER, pack_partials

pytestmark = pytest.mark.kafka
SCANNER, SCANNER_PROBES = "203.0.113.200", 80  # the demo traffic's scanner (scripts/make_samples.py)
DETECTION_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((schemas_dir() / "detection" / "v1.json").read_text()),
    format_checker=jsonschema.FormatChecker(),
)


def detections_file(tmp_path: Path, **overrides: object) -> Path:
    """The demo's detection configuration with a quicker emit step (and any overrides)."""
    text = DEMO_DETECTIONS.read_text().replace("emit_seconds = 2", "emit_seconds = 0.5")
    for key, value in overrides.items():
        text = text.replace("[detections]\n", f"[detections]\n{key} = {value}\n", 1)
    path = tmp_path / f"detections-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(text)
    return path


def start_confirm(
    bootstrap: str, config: Path, detections: Path, instance: str, metrics: str = ""
) -> subprocess.Popen:
    args = ["confirm", "--kafka", bootstrap, "--config", str(config), "--detections", str(detections),
            "--instance-id", instance]  # fmt: skip
    if metrics:
        args += ["--metrics", metrics]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    banner = proc.stdout.readline()
    assert banner.startswith("shoal confirm: instance"), banner + proc.stderr.read()
    return proc


def latest_detections(bootstrap: str, topic: str, until, timeout: float = 90) -> dict[str, dict]:
    """The latest version of every detection, read until ``until(latest)`` holds (or the timeout)."""
    consumer = reader(bootstrap, topic)
    latest: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.3):
                assert msg.error() is None, msg.error()
                record = json.loads(msg.value())
                assert dict(msg.headers())[SCHEMA_HEADER] == b"detection/1"
                latest[record["id"]] = record
            if latest and until(latest):
                break
    finally:
        consumer.close()
    return latest


def read_partials(bootstrap: str, topic: str, settle: float = 3.0, timeout: float = 120) -> list[dict]:
    """Committed partials until none came for ``settle`` seconds (the app's tick messages aside)."""
    consumer = reader(bootstrap, topic)
    out: list[dict] = []
    start = quiet_since = time.monotonic()
    try:
        while time.monotonic() - quiet_since < settle and time.monotonic() - start < timeout:
            for msg in consumer.consume(num_messages=1000, timeout=0.3):
                assert msg.error() is None, msg.error()
                if dict(msg.headers() or []).get(SCHEMA_HEADER) == PARTIAL_SCHEMA:
                    out += json.loads(msg.value())  # the partials of one transaction for one partition
                    quiet_since = time.monotonic()
    finally:
        consumer.close()
    return out


def hit_reference(batches: list) -> collections.Counter:
    """(indicator value-independent) flows per internal host, from the naive reference of the demo intel:
    the host is the flow's address opposite the matched side."""
    out: collections.Counter = collections.Counter()
    for batch in batches:
        for src, dst, _sport, _dport, side in expected_hits(flow_tuples(batch)):
            out[dst if side == "src" else src] += 1
    return out


def test_worker_partials_exactly_once_and_confirmed_detections_match_reference(kafka, tmp_path: Path) -> None:
    """Workers killed with SIGKILL mid-stream: the committed partials still hold every hit exactly once;
    the confirmation app turns them into detections whose flows per host equal the reference."""
    config, names = streams_config(tmp_path)
    setup_topics(kafka.bootstrap, config)
    base = datetime.now(UTC).replace(microsecond=0)
    batches = [demo_batch(base + timedelta(seconds=i)) for i in range(40)]
    want = hit_reference(batches)
    produce_batches(kafka.bootstrap, names["flows"], batches)
    detections = detections_file(tmp_path)
    slow = {"SHOAL_STREAMS__DETECT__MAX_MESSAGES": "1"}  # one message per transaction: many to cut through
    worker = start_worker(kafka.bootstrap, config, "w1", env=slow, detections=detections)
    deadline = time.monotonic() + 60
    while not read_partials(kafka.bootstrap, names["partials"], settle=0.3) and time.monotonic() < deadline:
        pass
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    worker = start_worker(kafka.bootstrap, config, "w1", detections=detections)
    confirm = start_confirm(kafka.bootstrap, config, detections, "c1")
    try:
        partials = read_partials(kafka.bootstrap, names["partials"], settle=4)
        got = collections.Counter()
        for p in partials:
            for h in p["hosts"] if p["kind"] == "indicator" else ():
                got[h["host"]] += h["flows"]
        assert got == want  # every hit in exactly one committed partial
        # fewer messages than alerts
        assert sum(p["kind"] == "indicator" for p in partials) < sum(want.values())
        scan_flows = sum(
            p["hosts"][0]["flows"] for p in partials if p["scan"] and p["scan"]["scanner"] == SCANNER
        )
        assert scan_flows == SCANNER_PROBES * len(batches)

        def complete(latest: dict) -> bool:
            scans = [d for d in latest.values() if d["kind"] == "scan"]
            return _flows_by_host(latest) == want and any(
                d["flows"] == SCANNER_PROBES * len(batches) for d in scans
            )

        latest = latest_detections(kafka.bootstrap, names["detections"], complete)
    finally:
        stop(worker)
        stop(confirm)
    assert _flows_by_host(latest) == want
    for d in latest.values():
        DETECTION_SCHEMA.validate(d)
        assert d["network"] == "demo-nren" and d["state"] in ("observed", "confirmed")
    (scan,) = [d for d in latest.values() if d["kind"] == "scan"]  # observed scans are not emitted
    assert scan["scan"] == {"scanner": SCANNER, "protocol": 6, "port": 23, "targets": SCANNER_PROBES,
                            "targets_exact": True}  # fmt: skip
    assert (scan["state"], scan["rule"], scan["internal_host"]) == ("confirmed", "scanner", None)
    assert scan["flows"] == scan["probe_flows"] == SCANNER_PROBES * len(batches)


def _flows_by_host(latest: dict) -> collections.Counter:
    out: collections.Counter = collections.Counter()
    for d in latest.values():
        if d["kind"] == "indicator":
            out[d["internal_host"]] += d["flows"]
    return out


def _partial(key: str, host: str, window_start: int, flows: int) -> dict:
    return {
        "kind": "indicator", "key": key, "window_start": window_start, "window_seconds": 300,
        "hosts": [{"host": host, "flows": flows, "packets": 2 * flows, "bytes": 100 * flows,
                   "first_seen": window_start + 1000, "last_seen": window_start + 2000,
                   "established_flows": flows, "probe_flows": 0, "sides": ["dst"]}],
        "exporters": ["198.51.100.1"],
        "indicator": {"id": key, "value": "203.0.113.5", "name": None, "source": "partner", "confidence": 50,
                      "tlp": "green", "valid_until": None},
        "scan": None,
    }  # fmt: skip


def produce_partials(bootstrap: str, topic: str, partials: list[dict], abort_every: int = 0) -> list[dict]:
    """As a worker does: in transactions of 10; every ``abort_every``-th transaction is aborted (its
    partials must never count). Returns the committed partials."""
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"test-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(30)
    committed = []
    for n, start in enumerate(range(0, len(partials), 10)):
        chunk = partials[start : start + 10]
        producer.begin_transaction()
        for partition, key, value in pack_partials(chunk, PartialsTopic().partitions):
            producer.produce(
                topic, value, key=key, partition=partition, headers=[(SCHEMA_HEADER, PARTIAL_SCHEMA)]
            )
        if abort_every and n % abort_every == abort_every - 1:
            producer.flush(30)  # the aborted partials are written to the log, then aborted
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)
            committed += chunk
    return committed


def test_confirm_counts_exact_across_kill9_two_instances_and_feedback(kafka, tmp_path: Path) -> None:
    config, names = streams_config(tmp_path)
    setup_topics(kafka.bootstrap, config)
    day = 86_400_000
    window = (int(time.time() * 1000) // day + 1) * day  # tomorrow: the windows stay open during the test
    keys = [f"indicator--{uuid.UUID(int=i)}" for i in range(12)]
    hosts = ["192.0.2.10", "192.0.2.11", "192.0.2.12"]
    partials = [_partial(keys[i % 12], hosts[i % 3], window, 1 + i % 4) for i in range(600)]
    detections = detections_file(tmp_path)
    metrics = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    first = start_confirm(kafka.bootstrap, config, detections, "c1", metrics[0])
    second = None
    try:
        committed = produce_partials(kafka.bootstrap, names["partials"], partials[:300], abort_every=4)
        want = collections.Counter()
        for p in committed:
            want[(p["key"], p["hosts"][0]["host"])] += p["hosts"][0]["flows"]
        time.sleep(1.5)
        # mid-stream: some partials applied, their offsets maybe not committed
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        first = start_confirm(kafka.bootstrap, config, detections, "c1", metrics[0])
        second = start_confirm(kafka.bootstrap, config, detections, "c2", metrics[1])
        time.sleep(8)  # both in the group: the partitions are shared
        committed += produce_partials(kafka.bootstrap, names["partials"], partials[300:], abort_every=5)
        want = collections.Counter()
        for p in committed:
            want[(p["key"], p["hosts"][0]["host"])] += p["hosts"][0]["flows"]

        def by_key(latest: dict) -> collections.Counter:
            return collections.Counter({(d["key"], d["internal_host"]): d["flows"] for d in latest.values()})

        latest = latest_detections(kafka.bootstrap, names["detections"], lambda ls: by_key(ls) == want)
        assert by_key(latest) == want  # exact: no partial lost, none doubled, none of the aborted ones
        applied = [scrape(m).get('shoal_confirm_partials_total{outcome="applied"}', 0) for m in metrics]
        assert all(a > 0 for a in applied), applied  # both instances did part of the work

        # An analyst calls one detection a false positive: a new version says so, with the reason.
        target = next(iter(latest.values()))
        out = shoal("feedback", "false-positive", target["id"], "--reason", "lab scanner", "--analyst", "soc1",
                    "--kafka", kafka.bootstrap, "--config", str(config))  # fmt: skip
        assert "false_positive recorded" in out
        updated = latest_detections(kafka.bootstrap, names["detections"],
                                    lambda ls: ls[target["id"]]["state"] == "false_positive", timeout=30)  # fmt: skip
        record = updated[target["id"]]
        assert record["state"] == "false_positive" and record["rule"] == "analyst"
        assert record["feedback"]["reason"] == "lab scanner" and record["feedback"]["analyst"] == "soc1"
        DETECTION_SCHEMA.validate(record)
    finally:
        for proc in (first, second):
            if proc is not None:
                stop(proc)


def test_confirm_without_its_topics_says_so(kafka, tmp_path: Path) -> None:
    config, _ = streams_config(tmp_path)  # topics not created
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "confirm", "--kafka", kafka.bootstrap, "--config",
                          str(config)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert res.returncode == 1
    assert (
        "missing topics" in res.stderr
        and "shoal topics create" in res.stderr
        and "Traceback" not in res.stderr
    )
