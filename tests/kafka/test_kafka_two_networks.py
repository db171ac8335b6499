"""Two networks, one loop: network A's flows show a scanner -> A confirms a scan detection -> A's
sharer puts an indicator and its sighting in the shared TAXII collection (medallion) -> B's
`shoal intel sync` pulls it -> B's matcher alerts on the scanner's flows at B. No address of A's
constituency reaches the collection or B."""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path

import pytest
from kafka_helpers import reader
from taxii2client.v21 import Collection
from test_kafka_detect import produce_batches
from two_networks import A_CONSTITUENCY, SCANNER, TwoNetworks, current_demo_batch, scanner_flows_at_b

from pipeline.share.destinations.taxii import read_back
from pipeline.share.guard import addresses_in
from pipeline.transport.indicators import read_state

pytestmark = pytest.mark.kafka

NETS = [ipaddress.ip_network(n) for n in A_CONSTITUENCY]


def a_addresses(text: str) -> set[str]:
    return {a for a in addresses_in(text) if any(ipaddress.ip_address(a) in n for n in NETS
                                                 if n.version == ipaddress.ip_address(a).version)}  # fmt: skip


def first_alert_from(bootstrap: str, topic: str, source: str, feed, timeout: float = 60) -> dict:
    """Feed B's traffic (``feed()`` every 2 s) until an alert on ``source`` is committed."""
    consumer = reader(bootstrap, topic)
    deadline, next_feed = time.monotonic() + timeout, 0.0
    try:
        while time.monotonic() < deadline:
            if time.monotonic() >= next_feed:
                feed()
                next_feed = time.monotonic() + 2
            for msg in consumer.consume(500, timeout=0.3):
                alert = json.loads(msg.value())
                if alert["src_addr"] == source:
                    return alert
    finally:
        consumer.close()
    raise AssertionError(f"no alert on {source} at B within {timeout:g}s")


def test_a_scanner_confirmed_at_a_alerts_at_b_through_the_shared_collection(
    kafka, medallion: str, tmp_path: Path
) -> None:
    nets = TwoNetworks(kafka.bootstrap, tmp_path, medallion)
    nets.start()
    try:
        produce_batches(kafka.bootstrap, nets.a["flows"], [current_demo_batch()])
        try:
            alert = first_alert_from(kafka.bootstrap, nets.b["alerts"], SCANNER,
                                     lambda: produce_batches(kafka.bootstrap, nets.b["flows"],
                                                             [scanner_flows_at_b()]))  # fmt: skip
        except AssertionError:
            collection = read_back(Collection(medallion, user="partner", password="s3cret"))
            state = read_state(kafka.bootstrap, nets.b["indicators"])
            from kafka_helpers import read_alerts

            dets = read_alerts(kafka.bootstrap, nets.a["detections"], 10**6, timeout=5)
            print(
                "share",
                {
                    k: v
                    for k, v in __import__("kafka_helpers").scrape(nets.share_metrics).items()
                    if "share" in k
                },
            )
            print(
                "A detections",
                sorted({(d["kind"], d["state"], d.get("tlp"), str(d.get("confidence"))) for d in dets}),
            )
            raise AssertionError(
                f"collection: {[o['type'] for o in collection]}; B's indicators: "
                f"{list(state.indicators)}; stderr: {[e[-800:] for e in nets.stop()]}"
            ) from None
    finally:
        errors = nets.stop()
    collection = read_back(Collection(medallion, user="partner", password="s3cret"))
    indicators = [o for o in collection if o["type"] == "indicator"]
    assert [o["pattern"] for o in indicators] == [f"[ipv4-addr:value = '{SCANNER}']"], errors
    assert any(o["type"] == "sighting" and o["sighting_of_ref"] == indicators[0]["id"] for o in collection)
    assert alert["indicator_id"] == indicators[0]["id"] and alert["dst_addr"].startswith("198.18.0.")
    # Nothing of A's users left A: not in the collection, not in B's indicators topic.
    assert a_addresses(json.dumps(collection)) == set()
    state = read_state(kafka.bootstrap, nets.b["indicators"])
    assert list(state.indicators) == [indicators[0]["id"]]
    assert a_addresses(json.dumps([str(i) for i in state.indicators.values()])) == set()
