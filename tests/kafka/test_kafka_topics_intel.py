"""Topics from configuration, and intel on the compacted indicators topic: deltas, withdrawal of
revoked/removed indicators as tombstones, unreadable messages counted — against the real broker."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
import stix2
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource
from kafka_helpers import TOPIC_KINDS, shoal, streams_config

from pipeline.schemas import schemas_dir
from pipeline.transport.indicators import assign_from_beginning, read_state, read_to_end

pytestmark = pytest.mark.kafka
INDICATOR_SCHEMA = json.loads((schemas_dir() / "indicator" / "v1.json").read_text())


def raw_messages(bootstrap: str, topic: str) -> list[tuple[str, bytes | None]]:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "raw", "enable.auto.commit": False})
    out: list[tuple[str, bytes | None]] = []
    read_to_end(
        consumer, assign_from_beginning(consumer, topic), lambda m: out.append((m.key().decode(), m.value()))
    )
    consumer.close()
    return out


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
    out = shoal(*base, str(listing), str(bundle))  # nothing changed: nothing produced
    assert "3 unchanged" in out and "1 unchanged" in out
    assert len(raw_messages(kafka.bootstrap, names["indicators"])) == 4

    listing.write_text("198.51.100.7\n2001:db8::66\n192.0.2.44\n")  # one removed, one added
    stix_bundle(bundle, revoked=True)  # the partner revokes its indicator
    out = shoal(*base, str(listing), str(bundle))
    assert "partner-list.txt: 1 new, 0 changed, 1 withdrawn, 2 unchanged" in out
    assert "bundle.json: 0 new, 0 changed, 1 withdrawn" in out

    messages = raw_messages(kafka.bootstrap, names["indicators"])
    latest = dict(messages)
    assert latest["partner-list.txt:198.51.100.8"] is None and latest[stix_id] is None  # tombstones
    state = read_state(kafka.bootstrap, names["indicators"])
    assert sorted(i.value for i in state.indicators.values()) == [
        "192.0.2.44",
        "198.51.100.7",
        "2001:db8::66",
    ]
    for _, value in messages:
        if value is not None:
            jsonschema.validate(json.loads(value), INDICATOR_SCHEMA)


def test_unreadable_indicator_messages_are_counted_and_the_rest_loads(kafka, tmp_path: Path) -> None:
    config, names = streams_config(tmp_path)
    shoal("topics", "create", "--kafka", kafka.bootstrap, "--config", str(config))
    listing = tmp_path / "list.txt"
    listing.write_text("198.51.100.7\n198.51.100.9\n")
    shoal("intel", "publish", "--kafka", kafka.bootstrap, "--config", str(config), str(listing))
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    producer.produce(names["indicators"], b"{not json", key=b"bad-1")
    producer.produce(names["indicators"], json.dumps({"id": "other", "value": "x"}).encode(), key=b"bad-2")
    assert producer.flush(10) == 0  # (a compacted topic refuses messages without a key outright)
    state = read_state(kafka.bootstrap, names["indicators"])
    assert state.errors == 2
    assert sorted(state.indicators) == ["list.txt:198.51.100.7", "list.txt:198.51.100.9"]
    out = shoal("intel", "publish", "--kafka", kafka.bootstrap, "--config", str(config), str(listing))
    assert "0 new, 0 changed, 0 withdrawn, 2 unchanged" in out


def test_sync_follows_a_taxii_collection_onto_the_topic(kafka, medallion: str, tmp_path: Path) -> None:
    """``shoal intel sync`` against a real TAXII 2.1 server: round one publishes the partner's
    indicators; the partner then revokes one, and round two withdraws it with a tombstone."""
    import subprocess
    import sys

    from kafka_helpers import ROOT
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
