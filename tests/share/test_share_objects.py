"""What goes out: STIX objects (strict stix2 parsing), counts against the detections that went in,
deterministic ids and versions, TLP propagation, and no constituent address in anything shared."""

from __future__ import annotations

import ipaddress
import json
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import stix2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from share_data import constituencies, detection, detection_sets

from detectors.constituency import ConstituencyConfig
from detectors.detections import TLP_ORDER
from pipeline.share.aggregate import Aggregator
from pipeline.share.build import ShareBuilder
from pipeline.share.delivery import dry_run
from pipeline.share.destinations.base import Share
from pipeline.share.guard import addresses_in
from pipeline.share.policy import DestinationConfig, IdentityConfig, SharingPolicy

W0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def make_policy(cidrs: list[str] = ("192.0.2.0/24",), **dest: Any) -> SharingPolicy:  # type: ignore[assignment]
    destinations = tuple(
        DestinationConfig(**{"name": f"d{i}", "type": "kafka", **d})
        for i, d in enumerate(dest.get("dests", [{}]))
    )
    return SharingPolicy(identity=IdentityConfig(name="Test NREN"), constituency=ConstituencyConfig(cidrs=tuple(cidrs)),
                         destinations=destinations).validate()  # fmt: skip


def shares_of(detections: list[dict[str, Any]], policy: SharingPolicy | None = None) -> dict[str, Share]:
    aggregator = Aggregator(ShareBuilder(policy or make_policy()), retention_seconds=float("inf"))
    latest: dict[str, Share] = {}
    for offset, d in enumerate(detections):
        for share in aggregator.add(d, 0, offset):
            latest[share.id] = share
    return latest


def test_one_sighting_per_indicator_and_window_summing_every_confirmed_host() -> None:
    ind = "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"
    other = W0.replace(minute=5)
    dets = [
        detection(indicator=ind, host=f"192.0.2.{i}", flows=i + 1, window_start=W0, hosts=4) for i in range(3)
    ]
    dets += [detection(indicator=ind, host="192.0.2.9", flows=50, window_start=W0, state="observed", hosts=4)]
    dets += [detection(indicator=ind, host="192.0.2.1", flows=7, window_start=other)]
    shares = shares_of(dets)
    sightings = sorted((s for s in shares.values() if s.kind == "sighting"), key=lambda s: s.window_start)
    assert [s.flows for s in sightings] == [1 + 2 + 3, 7]  # the observed host is not counted
    obj = sightings[0].objects[-1]
    assert obj["count"] == 6 and obj["sighting_of_ref"] == ind
    assert obj["first_seen"] == "2026-11-01T12:00:01Z" and obj["where_sighted_refs"] == [
        obj["created_by_ref"]
    ]
    assert obj["object_marking_refs"] == [
        "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
    ]  # TLP:GREEN
    for share in shares.values():
        for o in share.objects:
            stix2.parse(o, allow_custom=False)


def test_ids_are_deterministic_and_an_update_is_a_new_version() -> None:
    ind = "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"
    first = [detection(indicator=ind, host="192.0.2.1", flows=3, window_start=W0, updated_s=10)]
    again = shares_of(first)
    assert again.keys() == shares_of(first).keys()
    (share,) = again.values()
    assert share.objects == next(iter(shares_of(first).values())).objects
    grown = [*first, detection(indicator=ind, host="192.0.2.1", flows=9, window_start=W0, updated_s=40)]
    (newer,) = shares_of(grown).values()
    assert newer.id == share.id and newer.modified > share.modified and newer.flows == 9
    # A version older than the one held (a re-read) changes nothing.
    aggregator = Aggregator(ShareBuilder(make_policy()), retention_seconds=float("inf"))
    aggregator.add(grown[1])
    assert aggregator.add(grown[0]) == [] and aggregator.stats.stale_versions == 1


def test_a_late_detection_makes_a_later_version_even_when_its_own_update_is_older() -> None:
    """Detections of one sighting come from several partitions: one updated earlier may arrive last.
    Partners keep one object per (id, modified), so the grown count must carry a later stamp."""
    ind = "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"
    newer = detection(indicator=ind, host="192.0.2.2", flows=5, window_start=W0, updated_s=40)
    older = detection(indicator=ind, host="192.0.2.1", flows=3, window_start=W0, updated_s=10)
    aggregator = Aggregator(ShareBuilder(make_policy()), retention_seconds=float("inf"))
    (first,) = aggregator.add(newer, 0, 0)
    (second,) = aggregator.add(older, 1, 0)
    assert second.id == first.id and second.flows == 8 and second.objects[-1]["count"] == 8
    assert second.modified > first.modified and second.objects[-1]["modified"] == second.modified
    stix2.parse(first.objects[-1], allow_custom=False).new_version(modified=second.modified)  # later: valid
    stix2.parse(second.objects[-1], allow_custom=False)
    assert aggregator.add(older, 1, 1) == []  # the same detection again: nothing new to send


def test_misp_attribute_ids_are_sighted_by_their_stix_name_and_list_entries_are_not_shareable() -> None:
    uuid_id = "5f4e3d2c-1b0a-4c9d-8e7f-6a5b4c3d2e1f"
    (share,) = shares_of([detection(indicator=uuid_id)]).values()
    assert (
        share.objects[-1]["sighting_of_ref"] == f"indicator--{uuid_id}" and share.source_indicator == uuid_id
    )
    aggregator = Aggregator(ShareBuilder(make_policy()), retention_seconds=float("inf"))
    assert aggregator.add(detection(indicator="blocklist.txt:203.0.113.5")) == []
    assert aggregator.stats.unshareable == 1


def test_a_confirmed_scan_becomes_a_short_lived_indicator_and_its_sighting() -> None:
    (share,) = shares_of(
        [detection(kind="scan", scanner="203.0.113.200", port=23, targets=300, flows=320)]
    ).values()
    indicator, sighting = share.objects
    assert share.kind == "indicator" and indicator["pattern"] == "[ipv4-addr:value = '203.0.113.200']"
    assert sighting["sighting_of_ref"] == indicator["id"] and sighting["count"] == 320
    valid_from = datetime.fromisoformat(indicator["valid_from"].replace("Z", "+00:00"))
    valid_until = datetime.fromisoformat(indicator["valid_until"].replace("Z", "+00:00"))
    assert 24 * 3600 <= (valid_until - valid_from).total_seconds() <= 24 * 3600 + 600
    assert indicator["kill_chain_phases"] == [
        {"kill_chain_name": "mitre-attack", "phase_name": "reconnaissance"}
    ]
    assert 50 <= indicator["confidence"] <= 90 and indicator["indicator_types"] == ["anomalous-activity"]
    assert "300 distinct addresses" in indicator["description"]
    weaker = shares_of([detection(kind="scan", targets=20, flows=40)])
    assert next(iter(weaker.values())).confidence < share.confidence


def test_false_positive_is_an_opinion_and_a_sighting_left_with_none_confirmed_is_revoked() -> None:
    ind = "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"
    dets = [detection(indicator=ind, host="192.0.2.1", window_start=W0, updated_s=10)]
    dets.append(detection(indicator=ind, host="192.0.2.1", window_start=W0, updated_s=20, state="false_positive",
                          reason="our vulnerability scanner"))  # fmt: skip
    shares = shares_of(dets)
    opinion = next(s for s in shares.values() if s.kind == "false_positive")
    assert opinion.objects[0]["opinion"] == "strongly-disagree" and opinion.objects[0]["object_refs"] == [ind]
    assert opinion.reason == "our vulnerability scanner"
    sighting = next(s for s in shares.values() if s.kind == "sighting")
    assert sighting.objects[-1]["revoked"] is True
    stix2.parse(sighting.objects[-1], allow_custom=False)


def route(share: Share, **dest: Any) -> str | None:
    from pipeline.share.decide import refusal

    return refusal(share, DestinationConfig(name="d", type="kafka", **dest))


def test_tlp_propagation() -> None:
    ind = "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"
    mixed = shares_of([detection(indicator=ind, host="192.0.2.1", tlp="green"),
                       detection(indicator=ind, host="192.0.2.2", tlp="amber")])  # fmt: skip
    (share,) = mixed.values()
    assert share.tlp == "amber"  # the strictest input
    assert route(share, tlp_ceiling="green") == "tlp_ceiling"
    assert route(share, tlp_ceiling="green", amber_to_source=True, source_feeds=("partner-feed",)) is None
    assert route(share, tlp_ceiling="amber") is None
    (red,) = shares_of([detection(tlp="red")]).values()
    assert route(red, tlp_ceiling="red", source_feeds=("*",), amber_to_source=True) == "tlp_red"
    (strict,) = shares_of([detection(tlp="amber+strict")]).values()
    assert route(strict, tlp_ceiling="amber+strict") == "amber_strict"
    assert route(strict, tlp_ceiling="amber+strict", source_feeds=("partner-feed",)) is None
    assert route(strict, tlp_ceiling="green", source_feeds=("partner-feed",), amber_to_source=True) is None
    (unmarked,) = shares_of([detection(tlp=None)]).values()
    assert unmarked.tlp == "amber"  # the policy's default_tlp for inputs without TLP
    (low,) = shares_of([detection(confidence=40)]).values()
    assert route(low, min_confidence=50) == "confidence" and route(low, kinds=("indicators",)) == "kind"


def test_false_positives_go_back_only_to_the_feeds_source() -> None:
    (fp,) = [s for s in shares_of([detection(state="false_positive")]).values() if s.kind == "false_positive"]
    assert route(fp) == "not_source"
    assert route(fp, source_feeds=("other-feed",)) == "not_source"
    assert route(fp, source_feeds=("partner-feed",)) is None


def inside(text: str, nets: list[Any]) -> set[str]:
    """Naive reference: every address literal of ``text`` that lies in one of ``nets``."""
    out = set()
    for a in addresses_in(text):
        ip = ipaddress.ip_address(a)
        if any(ip.version == n.version and ip in n for n in nets):
            out.add(a)
    return out


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(st.data())
def test_no_constituent_address_in_anything_shared(data: st.DataObject) -> None:
    nets = data.draw(constituencies())
    detections = data.draw(detection_sets(nets))
    dests = [{"tlp_ceiling": "amber+strict", "source_feeds": ("*",)}, {"tlp_ceiling": "green"},
             {"allow_constituents": True, "tlp_ceiling": "amber", "source_feeds": ("*",)}]  # fmt: skip
    policy = make_policy([str(n) for n in nets], dests=dests)
    shares, outboxes = dry_run(policy, detections)
    for name, outbox in outboxes.items():
        for share in outbox.pending.values():
            text = json.dumps(share.objects)
            leaked = inside(text, nets)
            assert not leaked or outbox.config.allow_constituents, (name, leaked)
            assert share.tlp != "red" and TLP_ORDER[share.tlp] <= TLP_ORDER[outbox.config.tlp_ceiling]
        for share, reason, found in outbox.refusals:
            if reason == "constituent":
                assert set(found) == inside(json.dumps(share.objects), nets) != set()
    # Internal hosts never enter an object, whatever the destination allows.
    hosts = {d["internal_host"] for d in detections if d["internal_host"]}
    for share in shares:
        assert not hosts & addresses_in(json.dumps(share.objects)) - {s.scanner for s in shares}


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_sighting_counts_equal_the_flows_of_the_confirmed_detections(data: st.DataObject) -> None:
    detections = data.draw(detection_sets([ipaddress.ip_network("192.0.2.0/24")]))
    latest: dict[str, dict[str, Any]] = {}
    for d in detections:  # the version the sharer keeps: the latest 'updated' (a tie: the later one)
        if d["id"] not in latest or d["updated"] >= latest[d["id"]]["updated"]:
            latest[d["id"]] = d
    expected: dict[tuple[str, str], int] = defaultdict(int)
    for d in latest.values():
        if d["kind"] == "indicator" and d["state"] == "confirmed":
            expected[(d["key"], d["window_start"])] += d["flows"]
    got = {(s.source_indicator, s.window_start): s.flows for s in shares_of(detections).values()
           if s.kind == "sighting" and not s.objects[-1].get("revoked")}  # fmt: skip
    assert got == dict(expected)
    for (_, _), flows in got.items():
        assert flows > 0


def test_a_replayed_detection_completes_a_sighting_already_changed_by_a_new_message() -> None:
    """At restart a new message (partition 1) may change a sighting before the replay of another host's
    detection (partition 0) reaches it: the version to send must count both."""
    ind = "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"
    aggregator = Aggregator(ShareBuilder(make_policy()), retention_seconds=float("inf"))
    new = detection(indicator=ind, host="192.0.2.1", flows=41, window_start=W0, updated_s=50)
    old = detection(indicator=ind, host="192.0.2.7", flows=7, window_start=W0, updated_s=5)
    first = aggregator.add(new, partition=1, offset=9)
    assert [s.flows for s in first] == [41]
    completed = aggregator.add(old, partition=0, offset=3, replay=True)
    assert [s.flows for s in completed] == [48] and completed[0].id == first[0].id
    # A replay that changes nothing on its way out stays silent.
    quiet = Aggregator(ShareBuilder(make_policy()), retention_seconds=float("inf"))
    assert quiet.add(old, partition=0, offset=3, replay=True) == []
    assert quiet.commit_offsets() == {0: 4}
