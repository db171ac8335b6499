"""The MISP feed directory: written with PyMISP's feed export, loaded back by Shoal's own MISP feed
reader with the same scanners (side, validity, TLP); a restart keeps the feed, a re-send and an update
rewrite the same files; nothing of the constituency in any file."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from share_data import detection

from detectors.constituency import ConstituencyConfig
from pipeline.intel.misp import load_misp_feed
from pipeline.share.aggregate import Aggregator
from pipeline.share.build import ShareBuilder
from pipeline.share.build import context as share_context
from pipeline.share.destinations.base import Share
from pipeline.share.destinations.misp_feed import MispFeedDestination
from pipeline.share.policy import DestinationConfig, IdentityConfig, SharingPolicy

W0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)


def policy(path: Path) -> SharingPolicy:
    d = DestinationConfig(
        name="feed", type="misp-feed", path=str(path), kinds=("indicators",), tlp_ceiling="amber"
    )
    return SharingPolicy(identity=IdentityConfig(name="Network A CERT"), destinations=(d,),
                         constituency=ConstituencyConfig(cidrs=("192.0.2.0/24",))).validate()  # fmt: skip


def shares_of(p: SharingPolicy, dets: list[dict]) -> list[Share]:
    aggregator, out = Aggregator(ShareBuilder(p)), {}
    for offset, d in enumerate(dets):
        out.update((s.id, s) for s in aggregator.add(d, 0, offset))
    return list(out.values())


def scans() -> list[dict]:
    return [
        detection(kind="scan", scanner="198.51.100.77", port=23, targets=400, flows=500, window_start=W0, tlp="green"),
        detection(kind="scan", scanner="2001:db8:bad::7", port=22, targets=90, flows=95, window_start=W0, tlp="amber"),
        detection(kind="scan", scanner="203.0.113.9", port=445, targets=60, flows=61, window_start=W0 + timedelta(minutes=5),
                  tlp="green"),
        detection(indicator="indicator--0b2c5f0e-6a39-4bd6-9d0f-3a2d8e57a101", host="192.0.2.5", window_start=W0),
    ]  # fmt: skip


def uuid_of(p: SharingPolicy, share: Share) -> str:
    return MispFeedDestination(p.destinations[0], share_context(p)).builder.event_uuid(share)


def test_feed_round_trips_through_shoals_misp_feed_reader(tmp_path: Path) -> None:
    feed = tmp_path / "feed"
    p = policy(feed)
    shares = shares_of(p, scans())
    MispFeedDestination(p.destinations[0], share_context(p)).send(shares)
    manifest = json.loads((feed / "manifest.json").read_text())
    assert len(manifest) == 2  # one event per window
    assert sorted(f.name for f in feed.iterdir()) == sorted(
        ["manifest.json", "hashes.csv", *(f"{u}.json" for u in manifest)]
    )
    assert len((feed / "hashes.csv").read_text().splitlines()) == 3

    load = load_misp_feed(feed)
    assert load.errors == []
    got = {(str(c.network.network_address), c.side, i.tlp) for i in load.indicators for c in i.conditions}
    assert got == {
        ("198.51.100.77", "src", "green"),
        ("2001:db8:bad::7", "src", "amber"),
        ("203.0.113.9", "src", "green"),
    }
    by_value = {i.value: i for i in load.indicators}
    scan = next(s for s in shares if s.scanner == "198.51.100.77")
    indicator = by_value["ip-src: 198.51.100.77"]
    assert indicator.valid_until is not None
    assert indicator.valid_until.strftime("%Y-%m-%dT%H:%M:%S") == scan.objects[0]["valid_until"][:19]
    for path in feed.iterdir():
        assert "192.0.2." not in path.read_text()
    # Timestamps come from the shares' versions, not the clock: a re-send in a later second rewrites
    # the same bytes, and MISP sees a newer timestamp only for a newer version.
    event = json.loads((feed / f"{uuid_of(p, scan)}.json").read_text())["Event"]
    stamp = str(int(datetime.fromisoformat(scan.modified.replace("Z", "+00:00")).timestamp()))
    assert {a["timestamp"] for a in event["Attribute"] if a["value"] == scan.scanner} == {stamp}
    assert event["timestamp"] == max(a["timestamp"] for a in event["Attribute"])

    # A restart (a new destination on the same directory), a re-send and an update: same files, same events.
    before = {f.name: f.read_text() for f in feed.iterdir()}
    again = MispFeedDestination(p.destinations[0], share_context(p))
    again.send(shares)
    assert {f.name: f.read_text() for f in feed.iterdir()} == before
    grown = detection(kind="scan", scanner="198.51.100.77", port=23, targets=900, flows=1200, window_start=W0,
                      tlp="green", updated_s=60)  # fmt: skip
    again.send(shares_of(p, [*scans(), grown]))
    assert json.loads((feed / "manifest.json").read_text()).keys() == manifest.keys()
    reloaded = load_misp_feed(feed)
    assert len(reloaded.indicators) == 3
    assert any("900 addresses" in (i.name or "") for i in reloaded.indicators)
    assert not list(feed.glob(".*.tmp"))
