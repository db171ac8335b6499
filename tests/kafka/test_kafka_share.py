"""``shoal share`` on the real broker: detections on the detections topic become STIX sightings on the
sightings topic (key = object id) and in a file destination, counts equal to the detections' flows
summed by hand; a restart resumes from the committed offsets without re-sending what was delivered,
and an update goes out as a new version of the same object."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import stix2
from confluent_kafka import Producer
from demo_reference import free_port
from kafka_helpers import ROOT, reader, scrape, shoal, stop, streams_config
from share.share_data import detection

from pipeline.transport.detections import DETECTION_SCHEMA, SCHEMA_HEADER, encode_detection

pytestmark = pytest.mark.kafka
CONSTITUENCY = ipaddress.ip_network("192.0.2.0/24")
INDICATORS = [f"indicator--{n:08x}-17d4-4cbf-938f-98ee46b3cd3f" for n in range(3)]


def policy_file(tmp_path: Path, out: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(f"""
[identity]
name = "Network A CERT"
[constituency]
cidrs = ["{CONSTITUENCY}"]
[[destinations]]
name = "soc-topic"
type = "kafka"
tlp_ceiling = "amber"
[[destinations]]
name = "soc-file"
type = "file"
path = "{out}"
tlp_ceiling = "green"
""")
    return path


def produce(bootstrap: str, topic: str, detections: list[dict]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for d in detections:
        key, value = encode_detection(d)
        producer.produce(topic, value, key, headers=[(SCHEMA_HEADER, DETECTION_SCHEMA)])
    assert producer.flush(30) == 0


def start_share(bootstrap: str, config: Path, policy: Path, metrics: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "share", "--policy", str(policy), "--kafka", bootstrap,
         "--config", str(config), "--metrics", metrics],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    banner = proc.stdout.readline()
    assert banner.startswith("shoal share:"), banner + proc.stderr.read()
    return proc


def file_objects(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def wait_for(
    condition: Callable[[], bool], timeout: float = 60, seen: Callable[[], str] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out; {seen() if seen else ''}"
        time.sleep(0.3)


def expected_counts(detections: list[dict]) -> dict[tuple[str, str], int]:
    """The naive truth: flows of each (indicator, window)'s confirmed detections, latest version of each."""
    latest: dict[str, dict] = {}
    for d in detections:
        if d["id"] not in latest or d["updated"] >= latest[d["id"]]["updated"]:
            latest[d["id"]] = d
    sums: dict[tuple[str, str], int] = defaultdict(int)
    for d in latest.values():
        if d["state"] == "confirmed" and d["kind"] == "indicator":
            sums[(d["indicator"]["id"], d["window_start"])] += d["flows"]
    return dict(sums)


def sightings_by_key(objects: list[dict]) -> dict[tuple[str, str], dict]:
    """Latest version of each sighting, by (indicator, first second of its window)."""
    out: dict[str, dict] = {}
    for obj in objects:
        if obj["type"] == "sighting" and (
            obj["id"] not in out or obj["modified"] > out[obj["id"]]["modified"]
        ):
            out[obj["id"]] = obj
    return {(s["sighting_of_ref"], s["first_seen"][:16]): s for s in out.values()}


def test_share_to_kafka_and_file_resumes_from_committed_offsets(kafka, tmp_path: Path) -> None:
    bootstrap = kafka.bootstrap
    config, topics = streams_config(tmp_path)
    shoal("topics", "create", "--kafka", bootstrap, "--config", str(config))
    out = tmp_path / "shared.jsonl"
    policy = policy_file(tmp_path, out)
    w0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
    first = [
        detection(indicator=INDICATORS[i % 3], host=f"192.0.2.{i + 1}", flows=i + 1,
                  window_start=w0 + timedelta(minutes=5 * (i % 2)), tlp="green", updated_s=5 + i)
        for i in range(12)
    ]  # fmt: skip
    first.append(detection(indicator=INDICATORS[0], host="192.0.2.99", flows=1000, window_start=w0,
                           state="observed"))  # not confirmed: not counted  # fmt: skip
    first.append(detection(indicator=INDICATORS[1], host="192.0.2.98", flows=7, window_start=w0, tlp="amber"))
    produce(bootstrap, topics["detections"], first)

    metrics = f"127.0.0.1:{free_port()}"
    proc = start_share(bootstrap, config, policy, metrics)
    try:
        want = expected_counts(first)
        amber_key = (INDICATORS[1], first[-1]["window_start"][:16])
        file_want = {
            (ind, start[:16]): n for (ind, start), n in want.items() if (ind, start[:16]) != amber_key
        }

        def file_counts() -> dict[tuple[str, str], int]:
            return {k: s["count"] for k, s in sightings_by_key(file_objects(out)).items()}

        # Sightings are re-sent as their counts grow: wait for the whole count (a loaded machine may
        # take a while), then a commit round (1 s) and anything extra that would arrive.
        wait_for(lambda: file_counts() == file_want, seen=lambda: str(file_counts()))
        time.sleep(2.5)
        scraped = scrape(metrics)
    finally:
        _, err = stop(proc)
    assert proc.returncode == 0, err

    # One AMBER detection makes its whole sighting AMBER (the strictest input wins): the file destination
    # (GREEN ceiling) refuses it and has every other sighting; the Kafka one (AMBER ceiling) has them all.
    assert file_counts() == file_want
    assert scraped['shoal_share_refused_total{destination="soc-file",reason="tlp_ceiling"}'] >= 1

    consumer = reader(bootstrap, topics["sightings"])
    messages = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(sightings_by_key([m[1] for m in messages])) < len(want):
        for msg in consumer.consume(500, timeout=0.5):
            messages.append((msg.key().decode(), json.loads(msg.value()), dict(msg.headers() or [])))
    consumer.close()
    assert all(key == obj["id"] for key, obj, _ in messages)
    assert all(headers.get("shoal-schema") == b"stix/2.1" for _, _, headers in messages)
    topic_sightings = sightings_by_key([obj for _, obj, _ in messages])
    assert {k: s["count"] for k, s in topic_sightings.items()} == {
        (ind, start[:16]): n for (ind, start), n in want.items()
    }
    markings = {k: tuple(s["object_marking_refs"]) for k, s in topic_sightings.items()}
    assert (
        markings[amber_key] != markings[(INDICATORS[0], first[0]["window_start"][:16])]
    )  # AMBER wins over GREEN
    for _, obj, _ in messages:
        stix2.parse(obj, allow_custom=False)
        assert "192.0.2." not in json.dumps(obj)  # no constituent address anywhere

    # Restart with one detection grown and two new ones: what was delivered is not sent again, the grown
    # sighting goes out as a new version of the same id.
    sent_before = [(o["id"], o.get("modified")) for o in file_objects(out)]
    grown = detection(
        indicator=INDICATORS[0], host="192.0.2.1", flows=41, window_start=w0, tlp="green", updated_s=50
    )
    assert grown["id"] == first[0]["id"]
    later = [grown] + [
        detection(indicator=INDICATORS[2], host=f"192.0.2.{50 + i}", flows=3, window_start=w0 + timedelta(minutes=5),
                  tlp="green", updated_s=30)
        for i in range(2)
    ]  # fmt: skip
    produce(bootstrap, topics["detections"], later)
    proc = start_share(bootstrap, config, policy, f"127.0.0.1:{free_port()}")
    try:
        want_green = {(i, s[:16]): n for (i, s), n in expected_counts(first + later).items()}
        del want_green[amber_key]
        got = lambda: {k: s["count"] for k, s in sightings_by_key(file_objects(out)).items()}  # noqa: E731
        wait_for(lambda: got() == want_green, seen=lambda: f"{got()} != {want_green}")
        time.sleep(2.5)
    finally:
        _, err = stop(proc)
    assert proc.returncode == 0, err
    sent_after = [(o["id"], o.get("modified")) for o in file_objects(out)[len(sent_before) :]]
    shares_again = [
        x for x in sent_after if x in set(sent_before) and not x[0].startswith(("identity", "marking"))
    ]
    assert shares_again == [], "delivered versions were sent again after the restart"
    assert len(sent_after) == len(set(sent_after))
    regrown = sightings_by_key(file_objects(out))[(INDICATORS[0], first[0]["window_start"][:16])]
    assert regrown["id"] in {i for i, _ in sent_before}  # same object, newer version


def test_taxii_server_down_mid_stream_loses_and_duplicates_nothing(
    kafka, medallion_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """medallion stopped while detections keep coming, started again: the collection ends equal to the
    input (every sighting at its latest count, no version twice), and the outage shows in the metrics."""
    from taxii2client.v21 import Collection

    from pipeline.share.destinations.taxii import read_back

    bootstrap = kafka.bootstrap
    config, topics = streams_config(tmp_path)
    shoal("topics", "create", "--kafka", bootstrap, "--config", str(config))
    policy = tmp_path / "taxii-policy.toml"
    policy.write_text(f"""
[identity]
name = "Network A CERT"
[constituency]
cidrs = ["{CONSTITUENCY}"]
[[destinations]]
name = "trust-group"
type = "taxii"
url = "{medallion_server.url}"
user_env = "T_USER"
secret_env = "T_PASS"
timeout_seconds = 5
""")
    w0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
    before = [detection(indicator=INDICATORS[i % 3], host=f"192.0.2.{i + 1}", flows=i + 1, window_start=w0, updated_s=5)
              for i in range(6)]  # fmt: skip
    produce(bootstrap, topics["detections"], before)
    partner = Collection(medallion_server.url, user="partner", password="s3cret")

    def held() -> dict[tuple[str, str], int]:
        try:
            return {k: s["count"] for k, s in sightings_by_key(read_back(partner)).items()}
        except Exception:
            return {}

    metrics = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("T_USER", "partner")
    monkeypatch.setenv("T_PASS", "s3cret")
    proc = start_share(bootstrap, config, policy, metrics)
    try:
        want = {(i, s[:16]): n for (i, s), n in expected_counts(before).items()}
        wait_for(lambda: held() == want, seen=lambda: f"{held()} != {want}")
        medallion_server.stop()
        during = [detection(indicator=INDICATORS[i % 3], host=f"192.0.2.{20 + i}", flows=10, window_start=w0,
                            updated_s=20) for i in range(4)]  # fmt: skip
        during.append(
            detection(indicator=INDICATORS[0], host="192.0.2.1", flows=100, window_start=w0, updated_s=30)
        )
        produce(bootstrap, topics["detections"], during)
        wait_for(lambda: scrape(metrics).get('shoal_share_failed_total{destination="trust-group"}', 0) > 0)
        assert scrape(metrics)['shoal_share_destination_up{destination="trust-group"}'] == 0
        time.sleep(3)  # a few retries while it is down
        medallion_server.start()
        want = {(i, s[:16]): n for (i, s), n in expected_counts(before + during).items()}
        wait_for(lambda: held() == want, timeout=90, seen=lambda: f"{held()} != {want}")
        time.sleep(2)
        scraped = scrape(metrics)
    finally:
        _, err = stop(proc)
    assert proc.returncode == 0, err
    objects = read_back(partner)
    assert len(objects) == len({(o["id"], o.get("modified")) for o in objects}), "a version was stored twice"
    assert {k: s["count"] for k, s in sightings_by_key(objects).items()} == want
    assert scraped['shoal_share_retries_total{destination="trust-group"}'] >= 1
    assert scraped['shoal_share_destination_up{destination="trust-group"}'] == 1
    assert scraped['shoal_share_pending{destination="trust-group"}'] == 0
    assert not any("192.0.2." in json.dumps(o) for o in objects)
