"""The MISP destination through PyMISP against a local server that checks every request body against
MISP's published OpenAPI description and keeps MISP's state: sightings (type 0 confirmed, type 1
false positive) on the feed's attributes with this network as source, batched per window; scanners as
an event of ip-src attributes with to_ids, distribution and tlp tags; re-sends and updates never
duplicate; MISP down or refusing the key is a delivery error naming what failed."""

from __future__ import annotations

import ipaddress
import json
import re
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from misp_server import KEY, MispServer
from share_data import constituencies, detection, detection_sets

from detectors.constituency import ConstituencyConfig
from pipeline.share.aggregate import Aggregator
from pipeline.share.build import ShareBuilder
from pipeline.share.build import context as share_context
from pipeline.share.delivery import Outbox
from pipeline.share.destinations import open_destination
from pipeline.share.destinations.base import DeliveryError, Share
from pipeline.share.destinations.misp import MispDestination
from pipeline.share.guard import ConstituencyGuard
from pipeline.share.policy import DestinationConfig, IdentityConfig, SharingPolicy

W0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
FEED = [  # the partner's MISP attributes Shoal's intel came from
    {"id": "11", "uuid": str(uuid.uuid4()), "type": "ip-dst", "value": "203.0.113.66"},
    {"id": "12", "uuid": str(uuid.uuid4()), "type": "ip-dst", "value": "203.0.113.67"},
    {"id": "13", "uuid": str(uuid.uuid4()), "type": "ip-src", "value": "198.51.100.9"},
]


def policy(url: str, **dest: object) -> SharingPolicy:
    d = DestinationConfig(name="hub", type="misp", url=url, secret_env="T_MISP_KEY", **dest)  # type: ignore[arg-type]
    return SharingPolicy(identity=IdentityConfig(name="Network A CERT"), destinations=(d,),
                         constituency=ConstituencyConfig(cidrs=("192.0.2.0/24",))).validate()  # fmt: skip


def shares_of(p: SharingPolicy, dets: list[dict]) -> list[Share]:
    aggregator, out = Aggregator(ShareBuilder(p)), {}
    for offset, d in enumerate(dets):
        out.update((s.id, s) for s in aggregator.add(d, 0, offset))
    return list(out.values())


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_MISP_KEY", KEY)


def mixed_detections() -> list[dict]:
    """MISP-derived indicators (keyed by attribute uuid), a STIX-feed one (by value), a false
    positive, a scanner."""
    dets = [detection(indicator=FEED[i % 2]["uuid"], host=f"192.0.2.{i + 1}", flows=i + 1, window_start=W0,
                      value=FEED[i % 2]["value"], sources=("partner-misp",)) for i in range(4)]  # fmt: skip
    dets.append(detection(indicator=f"indicator--{uuid.uuid4()}", value="[ipv4-addr:value = '198.51.100.9']",
                          host="192.0.2.9", window_start=W0))  # fmt: skip
    dets.append(detection(indicator=FEED[1]["uuid"], host="192.0.2.50", window_start=W0 + timedelta(minutes=5),
                          value=FEED[1]["value"], state="false_positive", reason="our 192.0.2.50 mail relay",
                          sources=("partner-misp",)))  # fmt: skip
    dets.append(
        detection(kind="scan", scanner="198.51.100.77", port=23, targets=400, flows=500, window_start=W0)
    )
    return dets


def test_misp_requests_follow_the_api_description_and_never_duplicate() -> None:
    with MispServer(FEED) as misp:
        p = policy(misp.url, distribution=4, sharing_group="3")
        shares = shares_of(p, mixed_detections())
        destination = MispDestination(p.destinations[0], share_context(p))
        destination.send(shares)
        destination.send(shares)  # a re-send after a lost answer or a restart
        st = misp.state
        assert st.errors == []
        paths = {path for _, path, _ in st.requests}
        assert {
            "/sightings/add",
            "/attributes/restSearch",
            "/events/add",
            "/events/edit/" + next(iter(st.events)),
        } <= paths

        by_attr = {s["attribute_uuid"]: s for s in st.sightings() if s["type"] == "0"}
        assert set(by_attr) == {FEED[0]["uuid"], FEED[1]["uuid"], FEED[2]["uuid"]}  # by uuid, and by value
        assert len([s for s in st.sightings() if s["type"] == "0"]) == 3  # one per (indicator, window), once
        assert all(s["source"] == "Network A CERT" for s in st.sightings())
        assert {s["date_sighting"] for s in by_attr.values()} == {str(int(W0.timestamp()))}
        false_positives = [s for s in st.sightings() if s["type"] == "1"]
        assert [s["attribute_uuid"] for s in false_positives] == [FEED[1]["uuid"]]

        [event] = st.events.values()
        assert (
            event["distribution"] in ("4", 4) and event["sharing_group_id"] == p.destinations[0].sharing_group
        )
        assert {t["name"] for t in event["Tag"]} == {"tlp:green"}
        [attr] = event["Attribute"]
        assert (attr["type"], attr["value"], attr["to_ids"]) == ("ip-src", "198.51.100.77", True)

        # The scanner keeps scanning: a new version edits the same attribute, adds nothing.
        grown = detection(kind="scan", scanner="198.51.100.77", port=23, targets=900, flows=1200, window_start=W0,
                          updated_s=60)  # fmt: skip
        destination.send(shares_of(p, [*mixed_detections(), grown]))
        [event] = st.events.values()
        assert len(event["Attribute"]) == 1 and "900 addresses" in event["Attribute"][0]["comment"]
        assert len(st.sightings()) == 4 and st.errors == []
        # Nothing of the constituency in any request, the analyst's text included.
        assert "192.0.2." not in json.dumps([body for _, _, body in st.requests])


def test_misp_down_or_key_refused_is_a_delivery_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with MispServer(FEED) as misp:
        p = policy(misp.url)
        shares = shares_of(p, mixed_detections())
        monkeypatch.setenv("T_MISP_KEY", "wrong")
        with pytest.raises(DeliveryError) as refused:
            MispDestination(p.destinations[0], share_context(p)).send(shares)
        assert "wrong" not in str(refused.value)
        monkeypatch.setenv("T_MISP_KEY", KEY)
        destination = MispDestination(p.destinations[0], share_context(p))
        destination.send(shares[:1])
        misp.state.down = True
        with pytest.raises(DeliveryError) as down:
            destination.send(shares)
        assert down.value.failed == {s.id for s in shares}
        misp.state.down = False
        destination.send(shares)
        assert len([s for s in misp.state.sightings() if s["type"] == "0"]) == 3


def naive_inside(text: str, nets: list) -> set[str]:
    """Every address literal in ``text`` inside ``nets``, by Python's ipaddress over every token."""
    out = set()
    for token in re.findall(r"[0-9A-Fa-f:.]+", text):
        for candidate in {token, token.strip(".:")}:
            try:
                ip = ipaddress.ip_address(candidate)
            except ValueError:
                continue
            if any(ip.version == n.version and ip in n for n in nets):
                out.add(str(ip))
    return out


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_no_constituent_address_in_misp_requests_or_feed_files(data: st.DataObject) -> None:
    """Random detections and constituencies through the policy's outboxes to a MISP (the checking
    server) and a MISP feed: no request body and no feed file names a constituent address."""
    nets = data.draw(constituencies())
    detections = data.draw(detection_sets(nets))
    with MispServer([]) as misp, tempfile.TemporaryDirectory() as feed:
        dests = (DestinationConfig(name="hub", type="misp", url=misp.url, secret_env="T_MISP_KEY",
                                   tlp_ceiling="amber+strict", source_feeds=("*",), amber_to_source=True),
                 DestinationConfig(name="feed", type="misp-feed", path=feed, kinds=("indicators",), tlp_ceiling="amber"))  # fmt: skip
        p = SharingPolicy(identity=IdentityConfig(name="Network A CERT"), destinations=dests,
                          constituency=ConstituencyConfig(cidrs=tuple(str(n) for n in nets))).validate()  # fmt: skip
        guard = ConstituencyGuard(p.constituency_set())
        outboxes = [Outbox(d, open_destination(d, share_context(p)), guard) for d in dests]
        for share in shares_of(p, detections):
            for outbox in outboxes:
                outbox.offer(share)
        for outbox in outboxes:
            outbox.step()  # one batch each (MISP lacks the sighted attributes: those fail, and are kept)
        sent = json.dumps([body for _, _, body in misp.state.requests])
        assert naive_inside(sent, nets) == set()
        for path in Path(feed).iterdir():
            assert naive_inside(path.read_text(), nets) == set(), path.name
