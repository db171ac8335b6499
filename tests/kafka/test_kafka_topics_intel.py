"""Topics from configuration, and intel on the compacted indicators topic (schema indicators/2: a
manifest per feed, Arrow IPC chunks, deltas and tombstones) against the real broker: what is
published is what a worker's index answers (against a naive ipaddress reference), changes reach a
running worker (a chunk replaced, a feed deleted, a 1k change to a larger feed as a delta),
unreadable messages are counted, a topic of the old layout is refused and can be converted."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pyarrow as pa
import pytest
import stix2
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource
from kafka_helpers import ROOT, TOPIC_KINDS, shoal, streams_config
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).parent.parent / "detectors"))
from test_matcher_reference import _rows, reference

from pipeline.intel import load_source
from pipeline.intel.model import Condition, Indicator
from pipeline.intel.table import SCHEMA
from pipeline.runtime.intel_follower import IntelFollower
from pipeline.schemas import schemas_dir
from pipeline.transport.indicators import assign_from_beginning, read_state, read_to_end

pytestmark = pytest.mark.kafka
V1 = json.loads((schemas_dir() / "indicator" / "v1.json").read_text())
V2 = json.loads((schemas_dir() / "indicator" / "v2.json").read_text())
DEADLINE = 20.0
"""Seconds a running worker gets to show a change (a bound for the test, not a measure: the
latency is measured by benchmarks/bench_intel_load.py)."""


def raw_messages(bootstrap: str, topic: str) -> list[tuple[str, bytes | None, dict]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "raw", "enable.auto.commit": False})
    out: list[tuple[str, bytes | None, dict]] = []
    read_to_end(consumer, assign_from_beginning(consumer, topic),
                lambda m: out.append((m.key().decode(), m.value(), dict(m.headers() or ()))))  # fmt: skip
    consumer.close()
    return out


def check_layout(messages: list[tuple[str, bytes | None, dict]]) -> dict[str, bytes | None]:
    """Every message against schemas/indicator/v2.json; returns the latest value of each key."""
    for key, value, headers in messages:
        assert headers.get("shoal-schema") == b"indicators/2", key
        if value is None:
            continue
        if key.startswith("feed:"):
            jsonschema.validate(json.loads(value), V2["manifest"])
            continue
        table = pa.ipc.open_stream(value).read_all()
        kind = table.schema.metadata[b"shoal.kind"].decode()
        if kind == "rows":
            fields = {f["name"]: f for f in V2["fields"]}
            assert [n for n in fields if n in table.column_names] == table.column_names  # in the file's order
            for field in table.schema:
                assert field.type == SCHEMA.field(field.name).type and field.name != "id_prefix"
        elif kind == "objects":
            for text in table.column("indicator").to_pylist():
                jsonschema.validate(json.loads(text), V1)
        else:
            assert kind == "withdrawals" and table.column_names == ["chunk", "row"]
    return {key: value for key, value, _ in messages}


def test_topics_created_from_configuration(kafka, tmp_path: Path) -> None:
    config, names = streams_config(tmp_path, flows_partitions=4)
    out = shoal("topics", "create", "--kafka", kafka.bootstrap, "--config", str(config))
    assert out.count(": created") == len(TOPIC_KINDS), out
    again = shoal("topics", "create", "--kafka", kafka.bootstrap, "--config", str(config))
    assert again.count(": exists") == len(TOPIC_KINDS), again
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    topics = admin.list_topics(timeout=10).topics
    assert len(topics[names["flows"]].partitions) == 4
    assert len(topics[names["indicators"]].partitions) == 1
    resource = ConfigResource(ConfigResource.Type.TOPIC, names["indicators"])
    configs = admin.describe_configs([resource])[resource].result(10)
    assert configs["cleanup.policy"].value == "compact"
    resource = ConfigResource(ConfigResource.Type.TOPIC, names["detections"])
    configs = admin.describe_configs([resource])[resource].result(10)
    assert configs["cleanup.policy"].value == "compact,delete"  # latest version of each, for 30 days


def stix_bundle(path: Path, revoked: bool) -> str:
    identity = stix2.Identity(name="Partner CERT", identity_class="organization")
    indicator = stix2.Indicator(
        id="indicator--0b8ec5fc-1c34-4d1c-9b43-4cd7fbd0e111", created_by_ref=identity.id,
        created="2026-01-01T00:00:00Z", modified="2026-02-01T00:00:00Z" if revoked else "2026-01-01T00:00:00Z",
        pattern="[ipv4-addr:value = '203.0.113.9']", pattern_type="stix", valid_from="2026-01-01T00:00:00Z",
        revoked=revoked,
    )  # fmt: skip
    path.write_text(stix2.Bundle(identity, indicator, allow_custom=False).serialize())
    return indicator.id


def test_publish_sends_changes_only_and_withdraws_with_tombstones(kafka, tmp_path: Path) -> None:
    config, names = streams_config(tmp_path)
    shoal("topics", "create", "--kafka", kafka.bootstrap, "--config", str(config))
    listing = tmp_path / "partner-list.txt"
    listing.write_text("198.51.100.7\n198.51.100.8\n2001:db8::66\n")
    bundle = tmp_path / "bundle.json"
    stix_id = stix_bundle(bundle, revoked=False)
    base = ["intel", "publish", "--kafka", kafka.bootstrap, "--config", str(config)]

    out = shoal(*base, str(listing), str(bundle))
    assert "partner-list.txt: 3 new, 0 changed, 0 withdrawn, 0 unchanged" in out
    assert "bundle.json: 1 new" in out
    first = raw_messages(kafka.bootstrap, names["indicators"])
    assert len(first) == 4  # per feed one chunk and its manifest
    out = shoal(*base, str(listing), str(bundle))  # nothing changed: nothing produced
    assert "3 unchanged" in out and "1 unchanged" in out
    assert len(raw_messages(kafka.bootstrap, names["indicators"])) == 4

    listing.write_text("198.51.100.7\n2001:db8::66\n192.0.2.44\n")  # one removed, one added
    stix_bundle(bundle, revoked=True)  # the partner revokes its indicator
    out = shoal(*base, str(listing), str(bundle))
    assert "partner-list.txt: 1 new, 0 changed, 1 withdrawn, 2 unchanged" in out
    assert "bundle.json: 0 new, 0 changed, 1 withdrawn" in out

    latest = check_layout(raw_messages(kafka.bootstrap, names["indicators"]))
    old_chunks = [key for key, value, _ in first if key.startswith("chunk:")]
    assert all(latest[key] is None for key in old_chunks)  # small feeds are rewritten: old chunks deleted
    assert json.loads(latest[f"feed:{bundle}"]) | {"published": ""} == {
        "feed": str(bundle), "chunks": [], "indicators": 0, "published": ""}  # fmt: skip
    state = read_state(kafka.bootstrap, names["indicators"])
    assert sorted(i.value for i in state.indicators.values()) == [
        "192.0.2.44",
        "198.51.100.7",
        "2001:db8::66",
    ]
    assert stix_id not in state.indicators and not state.errors


def test_unreadable_messages_are_counted_and_the_rest_loads(kafka, tmp_path: Path) -> None:
    config, names = streams_config(tmp_path)
    shoal("topics", "create", "--kafka", kafka.bootstrap, "--config", str(config))
    listing = tmp_path / "list.txt"
    listing.write_text("198.51.100.7\n198.51.100.9\n")
    shoal("intel", "publish", "--kafka", kafka.bootstrap, "--config", str(config), str(listing))
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    v2 = [("shoal-schema", b"indicators/2")]
    producer.produce(names["indicators"], b"{not json", key=b"bad-1")  # no schema header
    producer.produce(names["indicators"], b"not arrow", key=b"chunk:00ff", headers=v2)
    manifest = {"feed": "ghost", "chunks": ["0" * 32], "indicators": 5}
    producer.produce(names["indicators"], json.dumps(manifest).encode(), key=b"feed:ghost", headers=v2)
    assert producer.flush(10) == 0  # (a compacted topic refuses messages without a key outright)
    state = read_state(kafka.bootstrap, names["indicators"])
    assert dict(state.errors) == {"unreadable": 2, "missing_chunk": 1}
    assert sorted(state.indicators) == ["list.txt:198.51.100.7", "list.txt:198.51.100.9"]
    out = shoal("intel", "publish", "--kafka", kafka.bootstrap, "--config", str(config), str(listing))
    assert "0 new, 0 changed, 0 withdrawn, 2 unchanged" in out


def test_a_topic_of_the_old_layout_is_refused_then_converted(kafka, tmp_path: Path) -> None:
    """indicator/1 messages (one JSON indicator each) are refused by publishers and workers with a
    message saying what to do; ``--replace-old-layout`` withdraws them while publishing."""
    config, names = streams_config(tmp_path)
    shoal("topics", "create", "--kafka", kafka.bootstrap, "--config", str(config))
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    old = Indicator(id="list.txt:192.0.2.1", value="192.0.2.1", source="list",
                    conditions=(Condition(network=ipaddress.ip_network("192.0.2.1/32")),))  # fmt: skip
    value = json.dumps({**old.to_dict(), "feed": "list.txt"}, sort_keys=True).encode()
    jsonschema.validate(json.loads(value), V1)
    producer.produce(
        names["indicators"], value, key=old.id.encode(), headers=[("shoal-schema", b"indicator/1")]
    )
    assert producer.flush(10) == 0
    listing = tmp_path / "list.txt"
    listing.write_text("198.51.100.7\n")
    publish = [sys.executable, "-m", "pipeline.cli", "intel", "publish", "--kafka", kafka.bootstrap, "--config",
               str(config), str(listing)]  # fmt: skip
    res = subprocess.run(publish, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert (
        res.returncode == 1
        and "1 indicators in the old layout" in res.stdout
        and "--replace-old-layout" in res.stdout
    )
    detect = [sys.executable, "-m", "pipeline.cli", "detect", "--kafka", kafka.bootstrap, "--config", str(config),
              "--instance-id", "old", "--duration", "20"]  # fmt: skip
    res = subprocess.run(detect, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 1 and "old layout" in res.stderr, res.stderr[-2000:]
    out = shoal(*publish[3:], "--replace-old-layout")
    assert "1 new" in out
    state = read_state(kafka.bootstrap, names["indicators"])
    assert not state.old_layout and sorted(state.indicators) == ["list.txt:198.51.100.7"]


def test_sync_follows_a_taxii_collection_onto_the_topic(kafka, medallion: str, tmp_path: Path) -> None:
    """``shoal intel sync`` against a real TAXII 2.1 server: round one publishes the partner's
    indicators; the partner then revokes one, and round two withdraws it."""
    from taxii2client.v21 import Collection

    config, names = streams_config(tmp_path)
    shoal("topics", "create", "--kafka", kafka.bootstrap, "--config", str(config))
    partner = Collection(medallion, user="partner", password="s3cret")
    indicators = [stix2.Indicator(pattern=f"[ipv4-addr:value = '203.0.113.{i}']", pattern_type="stix",
                                  valid_from="2026-01-01T00:00:00Z") for i in (1, 2, 3)]  # fmt: skip
    partner.add_objects(stix2.Bundle(*indicators).serialize())
    env = {**os.environ, "SHOAL_TAXII_USER": "partner", "SHOAL_TAXII_PASSWORD": "s3cret"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "intel", "sync", "--kafka", kafka.bootstrap,
                             "--config", str(config), "--every", "2", "--rounds", "2", f"taxii:{medallion}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    first = proc.stdout.readline()
    assert "3 new, 0 changed, 0 withdrawn" in first, first + proc.stderr.read()
    partner.add_objects(stix2.Bundle(indicators[1].new_version(revoked=True)).serialize())
    second = proc.stdout.readline()
    proc.wait(30)
    assert "0 new, 0 changed, 1 withdrawn, 2 unchanged" in second, second
    state = read_state(kafka.bootstrap, names["indicators"])
    assert sorted(state.indicators) == sorted([indicators[0].id, indicators[2].id])


# --- what a running worker sees ---------------------------------------------------------------


def naive_list(path: Path) -> list[Indicator]:
    """A list file read the simplest way (ipaddress, one line at a time): the reference's intel."""
    out = []
    for line in path.read_text().splitlines():
        entry = line.split("#")[0].strip()
        if not entry:
            continue
        address, _, port = entry.partition("|")
        out.append(Indicator(id=f"{path.name}:{entry}", value=entry, source=path.stem, conditions=(
            Condition(network=ipaddress.ip_network(address, strict=False),
                      dst_ports=frozenset({int(port)}) if port else None),)))  # fmt: skip
    return out


def flows_for(addresses: list[str]) -> list[dict]:
    return [{"src": "192.0.2.1", "dst": a, "sport": 5000, "dport": 443, "proto": 6} for a in addresses] + [
        {"src": a, "dst": "192.0.2.1", "sport": 80, "dport": 80, "proto": 6} for a in addresses
    ]


def answers(follower: IntelFollower, flows: list[dict]) -> set[tuple[int, str, str]]:
    return {(a["row"], a["indicator_id"], a["side"]) for a in _rows(follower.handle.matcher, flows)}


def wait_for(follower: IntelFollower, flows: list[dict], expected: set) -> float:
    """Seconds until the follower's matcher answers ``expected`` (fails past DEADLINE)."""
    started = time.monotonic()
    while answers(follower, flows) != expected:
        assert time.monotonic() - started < DEADLINE, "the running worker did not show the change in time"
        time.sleep(0.05)
    return time.monotonic() - started


def test_the_topic_round_trip_equals_the_reference(kafka, tmp_path: Path) -> None:
    """A list, a CSV file and STIX indicators (rows and objects) through publish, the topic and a
    worker's start: its index answers what the sources say, by the ipaddress reference."""
    config, names = streams_config(tmp_path)
    shoal("topics", "create", "--kafka", kafka.bootstrap, "--config", str(config))
    listing = tmp_path / "blocklist.txt"
    listing.write_text("198.51.100.0/28\n198.51.100.40 # c2\n198.51.100.50|443\n2001:db8::/64\n"
                       "198.51.100.128/25\n203.0.113.0/24|80\n")  # fmt: skip
    feed_csv = tmp_path / "feed.csv"
    feed_csv.write_text("first_seen,ip,port\n2026-01-01,203.0.113.77,\n2026-01-01,2001:db8:1::1,443\n")
    bundle = tmp_path / "partner.json"
    patterns = ["[ipv4-addr:value = '198.51.100.201']",
                "[ipv4-addr:value = '198.51.100.202'] OR [ipv6-addr:value = '2001:db8:2::/48']",
                "[network-traffic:dst_ref.value = '203.0.113.99' AND network-traffic:src_port = 80]"]  # fmt: skip
    stix = [
        stix2.Indicator(pattern=p, pattern_type="stix", valid_from="2026-01-01T00:00:00Z") for p in patterns
    ]
    bundle.write_text(stix2.Bundle(*stix).serialize())
    shoal("intel", "publish", "--kafka", kafka.bootstrap, "--config", str(config), str(listing),
          f"csv:{feed_csv}:ip:port", str(bundle))  # fmt: skip
    kinds = {pa.ipc.open_stream(v).schema.metadata[b"shoal.kind"] for k, v, _ in
             raw_messages(kafka.bootstrap, names["indicators"]) if k.startswith("chunk:")}  # fmt: skip
    assert kinds == {b"rows", b"objects"}
    csv_reference = [Indicator(id="feed.csv:203.0.113.77", value="203.0.113.77", source="feed", conditions=(
                         Condition(network=ipaddress.ip_network("203.0.113.77/32")),)),
                     Indicator(id="feed.csv:2001:db8:1::1|443", value="2001:db8:1::1|443", source="feed", conditions=(
                         Condition(network=ipaddress.ip_network("2001:db8:1::1/128"), dst_ports=frozenset({443})),))]  # fmt: skip
    intel = naive_list(listing) + csv_reference + load_source(str(bundle)).objects
    addresses = ["198.51.100.3", "198.51.100.40", "198.51.100.50", "198.51.100.200", "198.51.100.201", "198.51.100.202",
                 "203.0.113.5", "203.0.113.77", "203.0.113.99", "2001:db8::9", "2001:db8:1::1", "2001:db8:2::5",
                 "192.0.2.200"]  # fmt: skip
    flows = [
        *flows_for(addresses),
        {"src": "192.0.2.1", "dst": "203.0.113.99", "sport": 80, "dport": 80, "proto": 6},
    ]
    follower = IntelFollower(kafka.bootstrap, names["indicators"], CollectorRegistry())
    follower.start()
    try:
        got = answers(follower, flows)
        assert got == reference(intel, flows, []) and (len(flows) - 1, stix[2].id, "dst") in got
        assert follower.index.count == len(intel)
    finally:
        follower.stop()


def test_a_running_worker_sees_chunks_replaced_and_feeds_deleted(kafka, tmp_path: Path) -> None:
    config, names = streams_config(tmp_path)
    shoal("topics", "create", "--kafka", kafka.bootstrap, "--config", str(config))
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("198.51.100.10\n198.51.100.20\n")
    second.write_text("203.0.113.30\n")
    base = ["intel", "publish", "--kafka", kafka.bootstrap, "--config", str(config)]
    shoal(*base, str(first), str(second))
    flows = flows_for(["198.51.100.10", "198.51.100.20", "198.51.100.25", "203.0.113.30"])
    follower = IntelFollower(kafka.bootstrap, names["indicators"], CollectorRegistry())
    follower.start()
    try:
        assert answers(follower, flows) == reference(naive_list(first) + naive_list(second), flows, [])
        before = {
            k
            for k, v, _ in raw_messages(kafka.bootstrap, names["indicators"])
            if v and k.startswith("chunk:")
        }
        first.write_text("198.51.100.10\n198.51.100.25\n")  # the feed's chunk replaced
        shoal(*base, str(first))
        wait_for(follower, flows, reference(naive_list(first) + naive_list(second), flows, []))
        latest = check_layout(raw_messages(kafka.bootstrap, names["indicators"]))
        assert sum(latest[k] is None for k in before) == 1  # the replaced chunk's tombstone
        out = shoal("intel", "withdraw", "--kafka", kafka.bootstrap, "--config", str(config), str(second))
        assert f"{second}: 1 withdrawn" in out
        wait_for(follower, flows, reference(naive_list(first), flows, []))
        latest = check_layout(raw_messages(kafka.bootstrap, names["indicators"]))
        assert latest[f"feed:{second}"] is None and all(latest[k] is None for k in before)
        assert follower.index.source_counts() == {"first": 2}
    finally:
        follower.stop()


def test_a_1k_change_to_a_larger_feed_reaches_a_running_worker_as_a_delta(kafka, tmp_path: Path) -> None:
    config, names = streams_config(tmp_path)
    shoal("topics", "create", "--kafka", kafka.bootstrap, "--config", str(config))
    listing = tmp_path / "large.txt"
    lines = [f"10.{k >> 16 & 255}.{k >> 8 & 255}.{k & 255}" for k in range(1, 100_001)]
    listing.write_text("\n".join(lines) + "\n")
    base = ["intel", "publish", "--kafka", kafka.bootstrap, "--config", str(config), str(listing)]
    shoal(*base)
    follower = IntelFollower(kafka.bootstrap, names["indicators"], CollectorRegistry())
    follower.start()
    try:
        main = follower.index.main
        withdrawn, kept = lines[5_000:6_000], lines[50_000:50_020]
        added = [f"172.16.{k >> 8}.{k & 255}" for k in range(1_000)]
        lines = lines[:5_000] + lines[6_000:] + added
        listing.write_text("\n".join(lines) + "\n")
        out = shoal(*base)
        assert "1000 new, 0 changed, 1000 withdrawn, 99000 unchanged" in out and "(delta:" in out, out
        probe = withdrawn[::50] + kept + added[::50]
        flows = flows_for(probe)
        intel = [i for i in naive_list(listing) if i.value in set(probe)]
        wait_for(follower, flows, reference(intel, flows, []))
        assert follower.index.main is main and follower.changes == 2_000  # a delta, not a rebuild
        assert follower.index.count == 100_000
    finally:
        follower.stop()
