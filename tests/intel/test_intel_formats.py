"""Intel sources in their real formats: bundles built with stix2, events and feeds built with PyMISP,
MISP's published warninglists; bad items fail alone and name themselves."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import stix2
from pymisp import MISPEvent

sys.path.insert(0, str(Path(__file__).parent.parent / "detectors"))
from flowbatch import flow_batch

from detectors.index import IndicatorIndex
from detectors.matcher import Matcher, alerts_to_dicts
from pipeline.intel import IntelError, load_source
from pipeline.intel.allowlists import load_allowlist

WARNINGLISTS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "misp-warninglists"
TLP2_AMBER = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"


def bundle(tmp_path: Path, *objects) -> Path:
    path = tmp_path / "bundle.json"
    path.write_text(stix2.Bundle(*objects, allow_custom=True).serialize())
    return path


def indicator(pattern: str, **kw) -> stix2.Indicator:
    kw.setdefault("valid_from", "2026-01-01T00:00:00Z")
    return stix2.Indicator(pattern=pattern, pattern_type="stix", **kw)


def match(load, flows, allowlist=None) -> list[dict]:
    return alerts_to_dicts(Matcher(IndicatorIndex.build(load.indicators, allowlist)).match(flow_batch(flows)))


def test_stix_patterns_compile_and_match(tmp_path: Path) -> None:
    path = bundle(
        tmp_path,
        indicator(
            "[ipv4-addr:value = '203.0.113.7' OR ipv6-addr:value ISSUBSET '2001:db8:bad::/48']", confidence=90
        ),
        indicator(
            "[network-traffic:dst_ref.value = '198.51.100.9' AND network-traffic:dst_port = 4444 "
            "AND network-traffic:protocols[*] = 'tcp']"
        ),
        indicator(
            "[network-traffic:src_ref.value ISSUBSET '192.0.2.0/24' AND network-traffic:dst_ref.value = '203.0.113.9']"
        ),
        indicator("[autonomous-system:number = 64500]"),
        indicator("[ipv4-addr:value = '203.0.113.1'] FOLLOWEDBY [ipv4-addr:value = '203.0.113.2']"),
        indicator("[ipv4-addr:value = '203.0.113.3'] WITHIN 60 SECONDS"),
        indicator("[domain-name:value = 'evil.example']"),
        indicator(
            "[file:hashes.'SHA-256' = 'aec070645fe53ee3b3763059376134f058cc337247c978add178b6ccdfb0019f']"
        ),
    )
    load = load_source(str(path))
    assert len(load.indicators) == 4
    assert load.unsupported == {
        "FOLLOWEDBY": 1,
        "qualifier WITHIN": 1,
        "object domain-name": 1,
        "object file": 1,
    }
    alerts = match(load, [
        {"src": "192.0.2.1", "dst": "203.0.113.7", "dport": 443},
        {"src": "2001:db8:bad:1::5", "dst": "2001:db8::1"},
        {"src": "192.0.2.2", "dst": "198.51.100.9", "dport": 4444, "proto": 6},
        {"src": "192.0.2.2", "dst": "198.51.100.9", "dport": 4444, "proto": 17},
        {"src": "192.0.2.3", "dst": "203.0.113.9"},
        {"src": "10.0.0.3", "dst": "203.0.113.9"},
        {"src": "10.0.0.4", "dst": "10.0.0.5", "dst_as": 64500},
    ])  # fmt: skip
    got = sorted((a["src_addr"], a["side"]) for a in alerts)
    assert got == [("10.0.0.4", "dst"), ("192.0.2.1", "dst"), ("192.0.2.2", "dst"), ("192.0.2.3", "src"),
                   ("2001:db8:bad:1::5", "src")]  # fmt: skip
    assert {a["confidence"] for a in alerts if a["src_addr"] == "192.0.2.1"} == {90}


def test_stix_lifecycle_and_tlp(tmp_path: Path) -> None:
    objects = [
        indicator(
            "[ipv4-addr:value = '203.0.113.10']",
            valid_until="2026-06-01T00:00:00Z",
            object_marking_refs=[stix2.TLP_RED],
        ),
        indicator("[ipv4-addr:value = '203.0.113.11']", revoked=True),
        indicator("[ipv4-addr:value = '203.0.113.12']", confidence=20),
    ]
    raw = json.loads(stix2.Bundle(*objects).serialize())
    # A TLP 2.0 marking (not expressible through every stix2 version): reference the fixed id directly.
    raw["objects"].append({**raw["objects"][0], "id": "indicator--5a1b0c9d-6d0e-4a84-9b8d-2d1b1d2b3c4d",
                           "pattern": "[ipv4-addr:value = '203.0.113.13']", "object_marking_refs": [TLP2_AMBER]})  # fmt: skip
    raw["objects"][-1].pop("valid_until", None)
    path = tmp_path / "b.json"
    path.write_text(json.dumps(raw))
    load = load_source(str(path), min_confidence=50)
    assert load.skipped == {"revoked": 1, "below_confidence": 1}
    by_value = {i.value: i for i in load.indicators}
    assert by_value["[ipv4-addr:value = '203.0.113.10']"].tlp == "red"
    assert by_value["[ipv4-addr:value = '203.0.113.13']"].tlp == "amber"
    before = datetime(2026, 3, 1, tzinfo=UTC)
    after = datetime(2026, 7, 1, tzinfo=UTC)
    alerts = match(load, [{"src": "192.0.2.1", "dst": "203.0.113.10", "time": before},
                          {"src": "192.0.2.1", "dst": "203.0.113.10", "time": after}])  # fmt: skip
    assert [a["flow_end"][:7] for a in alerts] == ["2026-03"]  # expired intel never fires


def test_bad_items_fail_alone(tmp_path: Path) -> None:
    good = json.loads(stix2.Bundle(indicator("[ipv4-addr:value = '203.0.113.20']")).serialize())
    good["objects"] += [
        {"type": "indicator", "id": "indicator--11111111-1111-4111-8111-111111111111", "pattern": "[ipv4-addr:value = ",
         "pattern_type": "stix", "valid_from": "2026-01-01T00:00:00Z"},
        {"type": "indicator", "id": "indicator--22222222-2222-4222-8222-222222222222", "pattern": 42,
         "pattern_type": "stix", "valid_from": "2026-01-01T00:00:00Z"},
    ]  # fmt: skip
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(good))
    load = load_source(str(path))
    assert len(load.indicators) == 1
    assert len(load.errors) == 2
    assert any("indicator--1111" in e for e in load.errors) and any(
        "indicator--2222" in e for e in load.errors
    )
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(IntelError, match=r"broken\.json"):
        load_source(str(broken))


def _event() -> MISPEvent:
    event = MISPEvent()
    event.info = "Shoal test event"
    event.add_tag("tlp:amber")
    event.add_attribute("ip-dst", "203.0.113.30", to_ids=True)
    event.add_attribute("ip-src", "198.51.100.0/24", to_ids=True)
    event.add_attribute("ip-dst|port", "203.0.113.31|8443", to_ids=True)
    event.add_attribute("AS", "AS64501", to_ids=True)
    event.add_attribute("ip-dst", "203.0.113.32", to_ids=False)
    event.add_attribute("domain", "evil.example", to_ids=True)
    return event


def test_misp_event_and_feed(tmp_path: Path) -> None:
    event = _event()
    path = tmp_path / "event.json"
    path.write_text(event.to_json())
    load = load_source(str(path))
    assert len(load.indicators) == 4
    assert load.skipped == {"not_to_ids": 1}
    assert load.unsupported == {"misp type domain": 1}
    assert {i.tlp for i in load.indicators} == {"amber"}
    alerts = match(load, [
        {"src": "192.0.2.1", "dst": "203.0.113.30"},
        {"src": "203.0.113.30", "dst": "192.0.2.1"},  # ip-dst: only the dst side fires
        {"src": "198.51.100.77", "dst": "192.0.2.1"},
        {"src": "192.0.2.1", "dst": "203.0.113.31", "dport": 8443},
        {"src": "192.0.2.1", "dst": "203.0.113.31", "dport": 443},
        {"src": "192.0.2.1", "dst": "192.0.2.2", "src_as": 64501},
        {"src": "192.0.2.1", "dst": "203.0.113.32"},
    ])  # fmt: skip
    assert sorted((a["src_addr"], a["dst_addr"], a["side"]) for a in alerts) == [
        ("192.0.2.1", "192.0.2.2", "src"), ("192.0.2.1", "203.0.113.30", "dst"),
        ("192.0.2.1", "203.0.113.31", "dst"), ("198.51.100.77", "192.0.2.1", "src"),
    ]  # fmt: skip
    uuids = {a.uuid for a in event.attributes}
    assert {a["indicator_id"] for a in alerts} <= uuids
    feed = tmp_path / "feed"
    feed.mkdir()
    (feed / f"{event.uuid}.json").write_text(event.to_json())
    (feed / "manifest.json").write_text(json.dumps({event.uuid: {"info": event.info}, "missing-uuid": {}}))
    feed_load = load_source(str(feed))
    assert len(feed_load.indicators) == 4
    assert len(feed_load.errors) == 1 and "missing-uuid" in feed_load.errors[0]


@pytest.mark.skipif(not WARNINGLISTS.is_dir(), reason="shared MISP warninglists not present")
def test_real_warninglists_suppress_with_overlap_and_count(tmp_path: Path) -> None:
    allow = load_allowlist(WARNINGLISTS / "public-dns-v4" / "list.json")
    load_allowlist(WARNINGLISTS / "common-ioc-false-positive" / "list.json", into=allow)
    assert len(allow.entries) > 60_000
    intel = tmp_path / "list.txt"
    intel.write_text("# resolvers and neighbours\n8.8.8.0/24\n203.0.113.40\n")
    load = load_source(str(intel))
    index = IndicatorIndex.build(load.indicators, allow)
    matcher = Matcher(index)
    alerts = alerts_to_dicts(matcher.match(flow_batch([
        {"src": "192.0.2.1", "dst": "8.8.8.8", "dport": 53},  # public resolver: suppressed
        {"src": "192.0.2.1", "dst": "8.8.8.200", "dport": 53},  # same indicator /24, not a resolver
        {"src": "192.0.2.1", "dst": "203.0.113.40"},
    ])))  # fmt: skip
    assert sorted(a["dst_addr"] for a in alerts) == ["203.0.113.40", "8.8.8.200"]
    assert sum(matcher.stats.suppressed.values()) == 1


def test_ip_port_allowlist_values(tmp_path: Path) -> None:
    wl = tmp_path / "wl.json"
    wl.write_text(json.dumps({"name": "ntp", "type": "cidr", "list": ["203.0.113.50|123"]}))
    allow = load_allowlist(wl)
    intel = tmp_path / "l.txt"
    intel.write_text("203.0.113.50\n")
    alerts = match(load_source(str(intel)), [{"src": "192.0.2.1", "dst": "203.0.113.50", "dport": 123},
                                             {"src": "192.0.2.1", "dst": "203.0.113.50", "dport": 80}], allow)  # fmt: skip
    assert [a["dst_port"] for a in alerts] == [80]
