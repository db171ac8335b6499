"""Worker pre-aggregation against a naive reference: the matcher's alert rows grouped one by one in
Python, then partials merged into detection groups in any order, across batches."""

from __future__ import annotations

import ipaddress
import random
from collections import defaultdict
from datetime import timedelta

import jsonschema
from flowbatch import WHEN, flow_batch
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.detections import DetectionConfig, due, merge
from detectors.index import IndicatorIndex
from detectors.matcher import Matcher, alerts_to_dicts
from detectors.partials import indicator_partials
from pipeline.intel.model import Condition, Indicator
from pipeline.schemas import schemas_dir

WINDOW = 300
BAD = ["203.0.113.5", "203.0.113.6", "2001:db8:bad::1"]
HOSTS = ["192.0.2.10", "192.0.2.11", "192.0.2.12", "2001:db8:1::10"]
INDICATORS = [
    Indicator(id="indicator--a", value="203.0.113.5", source="CIRCL", confidence=80, tlp="amber",
              conditions=(Condition(network=ipaddress.ip_network("203.0.113.5/32")),)),
    Indicator(id="indicator--b", value="203.0.113.0/29", source="partner", confidence=40, tlp="green",
              conditions=(Condition(network=ipaddress.ip_network("203.0.113.0/29"), side="dst"),)),
    Indicator(id="indicator--c", value="2001:db8:bad::1", source="partner", tlp="red",
              conditions=(Condition(network=ipaddress.ip_network("2001:db8:bad::1/128")),)),
]  # fmt: skip


def _flow(rng: random.Random) -> dict:
    bad, host = rng.choice(BAD), rng.choice(HOSTS)
    if (":" in bad) != (":" in host):
        host = "2001:db8:1::10" if ":" in bad else "192.0.2.10"
    src, dst = (bad, host) if rng.random() < 0.5 else (host, bad)
    return {
        "src": src, "dst": dst, "sport": rng.randrange(65536), "dport": rng.choice([22, 443, 4444]),
        "proto": rng.choice([6, 6, 17, 1]), "flags": rng.choice([0x02, 0x12, 0x18, 0x04, 0]),
        "packets": rng.choice([1, 1, 3, 40]), "octets": rng.randrange(40, 100_000),
        "exporter": rng.choice(["198.51.100.1", "198.51.100.2"]),
        "time": WHEN + timedelta(seconds=rng.randrange(0, 3 * WINDOW)),
    }  # fmt: skip


def reference(alerts: list[dict]) -> dict:
    """(indicator, window start ms, host) -> aggregates, one alert at a time."""
    out: dict = {}
    exporters: dict = defaultdict(set)
    for a in alerts:
        t = int(a["_t"])
        window = t - t % (WINDOW * 1000)
        host = a["dst_addr"] if a["side"] == "src" else a["src_addr"]
        key = (a["indicator_id"], window, host)
        r = out.setdefault(key, {"flows": 0, "packets": 0, "bytes": 0, "first_seen": t, "last_seen": t,
                                 "established_flows": 0, "probe_flows": 0, "sides": set()})  # fmt: skip
        r["flows"] += 1
        r["packets"] += a["packets"]
        r["bytes"] += a["octets"]
        r["first_seen"], r["last_seen"] = min(r["first_seen"], t), max(r["last_seen"], t)
        tcp = a["protocol"] == 6
        r["established_flows"] += tcp and bool(a["tcp_flags"] & 0x10)
        r["probe_flows"] += (tcp and bool(a["tcp_flags"] & 0x02) and not a["tcp_flags"] & 0x10) or (
            not tcp and a["packets"] <= 1
        )
        r["sides"].add(a["side"])
        exporters[(a["indicator_id"], window)].add(a["exporter"])
    return {"hosts": out, "exporters": exporters}


def _alerts_with_time(matcher: Matcher, batch) -> list[dict]:
    table = matcher.match(batch)
    alerts = alerts_to_dicts(table)
    for a, end in zip(alerts, table.column("flow_end").cast("int64").to_pylist(), strict=True):
        a["_t"] = end // 1000
    return alerts


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 4))
def test_partials_merged_equal_reference(seed: int, batches: int) -> None:
    rng = random.Random(seed)
    index = IndicatorIndex.build(INDICATORS)
    matcher = Matcher(index)
    partial_schema = jsonschema.Draft202012Validator(
        __import__("json").loads((schemas_dir() / "partial" / "v1.json").read_text())
    )
    alerts, partials = [], []
    for _ in range(batches):
        batch = flow_batch([_flow(rng) for _ in range(rng.randrange(1, 120))])
        alerts += _alerts_with_time(matcher, batch)
        got = indicator_partials(batch, matcher.find(batch), index, WINDOW)
        for p in got:
            partial_schema.validate(p)
        partials += got
    rng.shuffle(partials)  # merging is order-free
    groups: dict = {}
    for p in partials:
        key = (p["key"], p["window_start"])
        groups[key] = merge(groups.get(key), p, max_hosts=1024)
    ref = reference(alerts)
    got_hosts = {
        (k[0], k[1], host): {f: v for f, v in agg.items() if f != "sides"} | {"sides": set(agg["sides"])}
        for k, g in groups.items()
        for host, agg in g["hosts"].items()
    }
    assert got_hosts == ref["hosts"]
    assert {k: set(g["exporters"]) for k, g in groups.items()} == dict(ref["exporters"])
    for (ind_id, _), g in groups.items():
        source = next(i for i in INDICATORS if i.id == ind_id)
        assert (
            g["sources"] == [source.source]
            and g["tlp"] == source.tlp
            and g["confidence"] == source.confidence
        )


def test_detection_records_follow_schema_and_rules() -> None:
    """Records validate against detection/v1; the rules decide the state; ids are stable."""
    import json

    rng = random.Random(7)
    index = IndicatorIndex.build(INDICATORS)
    matcher = Matcher(index)
    batch = flow_batch([_flow(rng) for _ in range(400)])
    config = DetectionConfig(network="example-nren").validate()
    schema = json.loads((schemas_dir() / "detection" / "v1.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    groups: dict = {}
    for p in indicator_partials(batch, matcher.find(batch), index, WINDOW):
        key = (p["key"], p["window_start"])
        groups[key] = merge(groups.get(key), p, config.max_hosts)
    ids = set()
    for group in groups.values():
        records, _ = due(group, config, now_ms=int(WHEN.timestamp() * 1000))
        for r in records:
            validator.validate(r)
            ids.add(r["id"])
            # indicator--a has confidence 80 (>= 75) and >= 3 flows per host in 400 flows: confirmed;
            # indicator--b (confidence 40) is confirmed only by the number of hosts (3 IPv4 hosts).
            if r["key"] == "indicator--a" and r["flows"] >= 3:
                assert (r["state"], r["rule"]) == ("confirmed", "confident-indicator")
            if r["key"] == "indicator--c":  # no confidence, at most one IPv6 host: never confirmed
                assert r["state"] == "observed" and r["internal_hosts"] == 1
    again: dict = {}
    for p in indicator_partials(batch, matcher.find(batch), index, WINDOW):
        key = (p["key"], p["window_start"])
        again[key] = merge(again.get(key), p, config.max_hosts)
    assert ids == {r["id"] for g in again.values() for r in due(g, config, 0)[0]}
