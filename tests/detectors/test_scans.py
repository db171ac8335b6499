"""Scan partials (detectors/scans.py) merged across batches against a naive reference: Python
``ipaddress`` membership and sets over the same flows, one dict per group."""

from __future__ import annotations

import ipaddress
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pyarrow as pa
import pytest
from datasketch import HyperLogLog
from flowbatch import flow_batch
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.constituency import Constituency
from detectors.detections import DetectionConfig, group_key, merge, render
from detectors.distinct import EXACT_LIMIT, HLL_P, TargetSet, hash32
from detectors.scans import ScanConfig, ScanStats, address_texts, scan_partials
from pipeline.config import ConfigError, load_tree
from pipeline.schemas import bytes16_to_ip, ip_to_bytes16

ROOT = Path(__file__).resolve().parents[2]
PARTIAL_SCHEMA = json.loads((ROOT / "schemas" / "partial" / "v1.json").read_text())
WINDOW = 300
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)  # a window boundary (epoch-aligned to 5 min)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

INSIDE_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/25", "2001:db8:c0::/48")]
INSIDE_AS = 64500
CONSTITUENCY = Constituency(INSIDE_NETS, [INSIDE_AS])


# --- the naive reference ----------------------------------------------------------------------------


def inside(address: str, asn: int) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in net for net in INSIDE_NETS if net.version == ip.version) or asn == INSIDE_AS


def flow_ms(f: dict[str, Any]) -> int | None:
    when = f["end"] if "end" in f else f.get("time", T0)
    if when is None:
        when = f.get("received", f.get("time", T0))
    return (when - EPOCH) // timedelta(milliseconds=1)


def reference_batch(flows: list[dict[str, Any]], window: int = WINDOW) -> dict[tuple, dict[str, Any]]:
    """Per (scanner, protocol, port, window start): every inbound flow's counts, for groups with a
    probe in this batch."""
    groups: dict[tuple, dict[str, Any]] = {}
    for f in flows:
        if inside(f["src"], f.get("src_as", 0)) or not inside(f["dst"], f.get("dst_as", 0)):
            continue
        proto, flags, packets = f.get("proto", 6), f.get("flags", 0), f.get("packets", 1)
        ms = flow_ms(f)
        key = (str(ipaddress.ip_address(f["src"])), proto, f.get("dport", 0), ms - ms % (1000 * window))
        g = groups.setdefault(key, {"flows": 0, "packets": 0, "bytes": 0, "first": ms, "last": ms,
                                    "established": 0, "probe": 0, "targets": set(), "exporters": set()})  # fmt: skip
        g["flows"] += 1
        g["packets"] += packets
        g["bytes"] += f.get("octets", 100)
        g["first"], g["last"] = min(g["first"], ms), max(g["last"], ms)
        g["established"] += proto == 6 and bool(flags & 0x10)
        g["probe"] += (proto == 6 and bool(flags & 0x02) and not flags & 0x10) or (
            proto != 6 and packets <= 1
        )
        g["targets"].add(str(ipaddress.ip_address(f["dst"])))
        g["exporters"].add(f.get("exporter", "192.0.2.254"))
    return {k: g for k, g in groups.items() if g["probe"]}


def reference(batches: list[list[dict[str, Any]]], window: int = WINDOW) -> dict[tuple, dict[str, Any]]:
    out: dict[tuple, dict[str, Any]] = {}
    for flows in batches:
        for key, g in reference_batch(flows, window).items():
            if key not in out:
                out[key] = g
                continue
            o = out[key]
            for name in ("flows", "packets", "bytes", "established", "probe"):
                o[name] += g[name]
            o["first"], o["last"] = min(o["first"], g["first"]), max(o["last"], g["last"])
            o["targets"] |= g["targets"]
            o["exporters"] |= g["exporters"]
    return out


# --- running the detector -----------------------------------------------------------------------------


def detect(
    batches: list[list[dict[str, Any]]], window: int = WINDOW, as_table: bool = False
) -> dict[str, Any]:
    validator = jsonschema.Draft202012Validator(PARTIAL_SCHEMA)
    groups: dict[str, Any] = {}
    for i, flows in enumerate(batches):
        batch = flow_batch(flows)
        if as_table and i % 2:  # a chunked table, as a consumer may hand over
            batch = pa.Table.from_batches([batch.slice(0, len(flows) // 2), batch.slice(len(flows) // 2)])
        for partial in scan_partials(batch, CONSTITUENCY, window, tlp="amber"):
            validator.validate(partial)
            key = group_key(partial)
            groups[key] = merge(groups.get(key), partial, max_hosts=16)
    return groups


def assert_equal_to_reference(groups: dict[str, Any], expected: dict[tuple, dict[str, Any]]) -> None:
    got = {}
    for g in groups.values():
        scan = g["scan"]
        got[(scan["scanner"], scan["protocol"], scan["port"], g["window_start"])] = g
        assert g["key"] == f"scan|{scan['scanner']}|{scan['protocol']}|{scan['port']}"
    assert set(got) == set(expected)
    for key, want in expected.items():
        g = got[key]
        assert list(g["hosts"]) == [""]
        host = g["hosts"][""]
        assert (host["flows"], host["packets"], host["bytes"]) == (
            want["flows"],
            want["packets"],
            want["bytes"],
        ), key
        assert (host["first_seen"], host["last_seen"]) == (want["first"], want["last"]), key
        assert (host["established_flows"], host["probe_flows"]) == (want["established"], want["probe"]), key
        assert host["sides"] == ["src"]
        assert g["exporters"] == sorted(want["exporters"])
        assert g["tlp"] == "amber"
        targets = TargetSet.from_json(g["scan"])
        if len(want["targets"]) <= EXACT_LIMIT:
            assert targets.exact
            assert set(g["scan"]["targets"]) == want["targets"], key
        else:  # the registers datasketch builds from the reference's set, one update each
            hll = HyperLogLog(p=HLL_P, hashfunc=hash32)
            for t in want["targets"]:
                hll.update(ip_to_bytes16(t))
            assert targets.hll is not None and np.array_equal(targets.hll.reg, hll.reg), key
            n = len(want["targets"])
            assert abs(targets.count() - n) <= 0.065 * n  # 4 standard errors at p=12


# --- traffic ---------------------------------------------------------------------------------------------


def mixed_traffic(rng: random.Random) -> list[dict[str, Any]]:
    """Scanners and everything that must not look like one, times over two windows."""
    flows: list[dict[str, Any]] = []

    def at(seconds: float) -> datetime:
        return T0 + timedelta(seconds=seconds)

    inside4 = [f"192.0.2.{i}" for i in range(1, 255)] + [f"198.51.100.{i}" for i in range(1, 127)]
    inside6 = [f"2001:db8:c0::{i:x}" for i in range(1, 400)]
    exporters = ["192.0.2.253", "192.0.2.254", "2001:db8::1"]
    # TCP SYN scanner, IPv4, 340 targets (beyond the exact limit), across the window boundary at 300 s
    for i, dst in enumerate(inside4[:340]):
        flows.append({"src": "203.0.113.5", "dst": dst, "sport": 40000 + i, "dport": 22, "flags": 0x02,
                      "packets": rng.choice([1, 2]), "octets": 60, "time": at(250 + i * 0.3),
                      "exporter": rng.choice(exporters)})  # fmt: skip
    # the same scanner, a few completed handshakes where something answered, and SYN+RST probes
    for dst in inside4[:5]:
        flows.append({"src": "203.0.113.5", "dst": dst, "dport": 22, "flags": 0x1B, "packets": 12, "octets": 3000,
                      "time": at(260)})  # fmt: skip
    # and in a third window only completed handshakes, seen by another exporter: no partial there, and
    # nothing of it in the neighbouring windows' groups
    for dst in inside4[:30]:
        flows.append({"src": "203.0.113.5", "dst": dst, "dport": 22, "flags": 0x1B, "packets": 12, "octets": 3000,
                      "time": at(700), "exporter": "192.0.2.252"})  # fmt: skip
    for dst in inside4[340:350]:
        flows.append({"src": "203.0.113.5", "dst": dst, "dport": 22, "flags": 0x06, "time": at(270)})
    # IPv6 UDP scanner, one-packet flows, 120 targets, sampled exporter (counts carried, not rescaled)
    for dst in inside6[:120]:
        flows.append({"src": "2001:db8:bad::7", "dst": dst, "dport": 161, "proto": 17, "packets": 1, "octets": 80,
                      "time": at(rng.uniform(0, 299)), "sampling": 100, "exporter": "2001:db8::1"})  # fmt: skip
    # ICMP echo sweep (type 8 code 0 as dst_port 2048), some without a flow end (receipt time counts)
    for i, dst in enumerate(inside4[:80]):
        f = {"src": "198.51.100.200", "dst": dst, "dport": 2048, "proto": 1, "packets": 1, "octets": 84}
        if i % 3:
            f["time"] = at(100 + i)
        else:
            f["end"], f["received"] = None, at(290 + i * 0.2)
        flows.append(f)
    # an IPv6 TCP scanner on two ports: two groups
    for dst in inside6[:60]:
        for port in (80, 8080):
            flows.append({"src": "2001:db8:bad::9", "dst": dst, "dport": port, "flags": 0x02, "time": at(30)})
    # a target inside by AS number only (its address is outside every CIDR)
    for i in range(20):
        flows.append({"src": "203.0.113.6", "dst": f"203.0.113.{100 + i}", "dst_as": INSIDE_AS, "dport": 3389,
                      "flags": 0x02, "time": at(40)})  # fmt: skip
    # busy inside servers: 500 outside clients, completed handshakes both ways; 30 of them also send a
    # lone SYN (their groups are reported, with all their flows)
    for c in range(500):
        client = f"10.{c // 250}.{c % 250}.1"
        for _ in range(rng.randint(1, 4)):
            server = rng.choice(["192.0.2.10", "192.0.2.11", "2001:db8:c0::443"])
            if ":" in server:
                client6 = f"2001:db8:f00d::{c:x}"
                flows.append({"src": client6, "dst": server, "dport": 443, "flags": 0x1B, "packets": 20,
                              "octets": 9000, "time": at(rng.uniform(0, 599))})  # fmt: skip
                continue
            flows.append({"src": client, "dst": server, "dport": 443, "flags": 0x1B, "packets": 20,
                          "octets": 9000, "time": at(rng.uniform(0, 599))})  # fmt: skip
            flows.append({"src": server, "dst": client, "sport": 443, "flags": 0x1B, "packets": 25,
                          "octets": 30000, "time": at(rng.uniform(0, 599))})  # fmt: skip
        if c < 30:
            flows.append({"src": client, "dst": "192.0.2.10", "dport": 443, "flags": 0x02,
                          "time": at(rng.uniform(0, 599))})  # fmt: skip
    # an inside DNS server's outside clients: one-packet UDP flows (probe-shaped, reported)
    for c in range(40):
        flows.append({"src": f"172.16.0.{c}", "dst": "192.0.2.53", "dport": 53, "proto": 17, "packets": 1,
                      "time": at(rng.uniform(0, 599))})  # fmt: skip
        flows.append({"src": f"172.16.0.{c}", "dst": "192.0.2.53", "dport": 53, "proto": 17, "packets": 3,
                      "time": at(rng.uniform(0, 599))})  # fmt: skip
    # a crawler: completed handshakes to 150 inside hosts, no probe: no partial
    for dst in inside4[:150]:
        flows.append(
            {"src": "203.0.113.50", "dst": dst, "dport": 80, "flags": 0x1B, "packets": 8, "time": at(60)}
        )
    # inside hosts scanning out, inside to inside, outside to outside (transit): never reported
    for i in range(200):
        flows.append({"src": "192.0.2.66", "dst": f"203.0.113.{i % 250}", "dport": 23, "flags": 0x02,
                      "time": at(10)})  # fmt: skip
        flows.append({"src": "192.0.2.67", "dst": inside4[i], "dport": 445, "flags": 0x02, "time": at(10)})
        flows.append(
            {"src": "203.0.113.77", "dst": f"10.9.{i}.1", "dport": 23, "flags": 0x02, "time": at(10)}
        )
        # an outside address that is inside by its source AS: not an outside scanner
        flows.append({"src": "203.0.113.88", "src_as": INSIDE_AS, "dst": inside4[i], "dport": 23, "flags": 0x02,
                      "time": at(10)})  # fmt: skip
    # TCP flows without flags exported and larger UDP flows: neither probes nor established
    for i in range(50):
        flows.append({"src": "203.0.113.90", "dst": inside4[i], "dport": 25, "flags": 0, "time": at(5)})
        flows.append({"src": "203.0.113.91", "dst": inside4[i], "dport": 123, "proto": 17, "packets": 2,
                      "time": at(5)})  # fmt: skip
    rng.shuffle(flows)
    return flows


def split(flows: list[dict[str, Any]], parts: int, rng: random.Random) -> list[list[dict[str, Any]]]:
    cuts = sorted(rng.sample(range(1, len(flows)), parts - 1))
    return [flows[a:b] for a, b in zip([0, *cuts], [*cuts, len(flows)], strict=True)]


# --- tests --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parts", [1, 4, 9])
def test_mixed_traffic_merged_equals_reference(parts: int) -> None:
    rng = random.Random(parts)
    batches = split(mixed_traffic(rng), parts, rng)
    groups = detect(batches, as_table=True)
    expected = reference(batches)
    assert_equal_to_reference(groups, expected)
    scanners = {k[0] for k in expected}
    # what the traffic was built to contain, spelled out so the reference cannot be vacuous
    assert {"203.0.113.5", "2001:db8:bad::7", "198.51.100.200", "2001:db8:bad::9", "203.0.113.6"} <= scanners
    assert {"192.0.2.66", "192.0.2.67", "203.0.113.77", "203.0.113.88", "203.0.113.50"}.isdisjoint(scanners)
    assert {"203.0.113.90", "203.0.113.91"}.isdisjoint(scanners)
    assert not any(s.startswith("2001:db8:f00d::") for s in scanners)
    assert not any("192.0.2.252" in g["exporters"] for g in groups.values())
    ssh = [g for k, g in expected.items() if k[:3] == ("203.0.113.5", 6, 22)]
    # two windows, one beyond exact
    assert len(ssh) == 2 and sum(len(g["targets"]) for g in ssh) > EXACT_LIMIT


def test_scan_detection_confirmed_and_busy_server_client_not() -> None:
    rng = random.Random(7)
    batches = split(mixed_traffic(rng), 3, rng)
    groups = detect(batches)
    config = DetectionConfig()  # the default rules: scanner = >= 50 targets, <= 20% established
    states = {}
    for g in groups.values():
        for _, record in render(g, config, now_ms=0):
            states[(g["scan"]["scanner"], g["scan"]["port"], g["window_start"])] = record["state"]
            assert record["tlp"] == "amber"
    confirmed = {k[:2] for k, s in states.items() if s == "confirmed"}
    assert ("2001:db8:bad::7", 161) in confirmed and ("2001:db8:bad::9", 8080) in confirmed
    assert ("198.51.100.200", 2048) in confirmed and ("203.0.113.5", 22) in confirmed
    assert ("203.0.113.6", 3389) not in confirmed  # 20 targets
    assert not any(k[0].startswith("10.") or k[0].startswith("172.16.") for k in confirmed)


inside_pool = ["192.0.2.1", "192.0.2.2", "198.51.100.5", "2001:db8:c0::1", "2001:db8:c0::2"]
outside_pool = ["203.0.113.1", "203.0.113.2", "198.51.100.129", "2001:db8:bad::1", "10.0.0.1"]
flow_strategy = st.fixed_dictionaries(
    {
        "src": st.sampled_from(inside_pool + outside_pool),
        "dst": st.sampled_from(inside_pool + outside_pool),
        "dport": st.sampled_from([0, 22, 443, 65535]),
        "proto": st.sampled_from([1, 6, 17, 58]),
        "flags": st.sampled_from([0, 0x02, 0x12, 0x10, 0x06, 0x1B, 0x04]),
        "packets": st.sampled_from([0, 1, 2, 1000]),
        "octets": st.integers(0, 2**40),
        "src_as": st.sampled_from([0, INSIDE_AS, 65000]),
        "dst_as": st.sampled_from([0, INSIDE_AS, 65000]),
        "exporter": st.sampled_from(["192.0.2.254", "2001:db8::1"]),
        "end": st.one_of(
            st.none(), st.integers(-1000, 1000).map(lambda s: T0 + timedelta(milliseconds=997 * s))
        ),
        "received": st.integers(-1000, 1000).map(lambda s: T0 + timedelta(microseconds=777_777 * s)),
    }
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(flow_strategy, min_size=1, max_size=40), min_size=1, max_size=4),
    st.sampled_from([1, 60, 300]),
)
def test_random_flows_merged_equal_reference(batches: list[list[dict[str, Any]]], window: int) -> None:
    assert_equal_to_reference(detect(batches, window), reference(batches, window))


def test_spoofed_flood_is_bounded_keeping_the_widest_scanners() -> None:
    flows = [{"src": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "dst": "192.0.2.10", "dport": 80, "flags": 0x02}
             for i in range(3000)]  # fmt: skip
    flows += [{"src": "203.0.113.5", "dst": f"192.0.2.{i}", "dport": 22, "flags": 0x02} for i in range(1, 40)]
    flows += [{"src": "203.0.113.6", "dst": f"192.0.2.{i}", "dport": 23, "flags": 0x02} for i in range(1, 3)]
    stats = ScanStats()
    partials = scan_partials(flow_batch(flows), CONSTITUENCY, WINDOW, max_groups=10, stats=stats)
    assert len(partials) == 10
    assert stats.groups_dropped == 3002 - 10
    assert stats.partials == 10 and stats.probe_flows == len(flows) and stats.flows == len(flows)
    keys = [p["key"] for p in partials]
    assert "scan|203.0.113.5|6|22" in keys and "scan|203.0.113.6|6|23" in keys


def test_no_constituency_no_probes_no_partials() -> None:
    flows = [{"src": "203.0.113.5", "dst": f"192.0.2.{i}", "dport": 22, "flags": 0x02} for i in range(1, 40)]
    assert scan_partials(flow_batch(flows), Constituency(), WINDOW) == []
    established = [dict(f, flags=0x12) for f in flows]
    assert scan_partials(flow_batch(established), CONSTITUENCY, WINDOW) == []
    assert scan_partials(flow_batch(flows).slice(0, 0), CONSTITUENCY, WINDOW) == []


def test_scan_config_validates(tmp_path: Path) -> None:
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Tree:
        scan: ScanConfig = field(default_factory=ScanConfig)

    path = tmp_path / "shoal.toml"
    path.write_text('[scan]\nenabled = false\ntlp = "amber+strict"\nmax_groups_per_batch = 5\n')
    tree = load_tree(Tree, path, "SHOAL_TEST_", environ={})
    assert tree.scan.validate() == ScanConfig(enabled=False, tlp="amber+strict", max_groups_per_batch=5)
    assert ScanConfig().tlp == "green" and ScanConfig().enabled
    with pytest.raises(ConfigError, match=r"scan\.tlp"):
        ScanConfig(tlp="purple").validate()
    with pytest.raises(ConfigError, match="max_groups_per_batch"):
        ScanConfig(max_groups_per_batch=0).validate()
    with pytest.raises(ConfigError, match="scan"):
        load_tree(Tree, None, "SHOAL_TEST_", environ={"SHOAL_TEST_SCAN__ENABLED": "maybe"})


zero_run_v6 = st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0xABC]), min_size=8, max_size=8).map(
    lambda h: ipaddress.IPv6Address(b"".join(x.to_bytes(2, "big") for x in h))
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6), zero_run_v6), min_size=1, max_size=30))
def test_address_texts_equal_ipaddress(addrs: list) -> None:
    """The vectorised texts (Arrow for IPv4, inet_ntop for IPv6) are bytes16_to_ip's, zero runs,
    IPv4-compatible and IPv4-mapped forms included."""
    raw = np.frombuffer(b"".join(ip_to_bytes16(a) for a in addrs), np.uint8).reshape(-1, 16)
    assert address_texts(raw) == [str(bytes16_to_ip(r.tobytes())) for r in raw]


def test_demo_sample_has_one_scanner() -> None:
    """The bundled traffic's scanner (scripts/make_samples.py), found in Shoal's decoding of the pcap with
    the demo constituency; the merged groups equal the reference over the same flows."""
    from pipeline.decode import Datagram, FlowDecoder
    from pipeline.runtime.replay import read_capture
    from pipeline.samples import DEMO_CONSTITUENCY, DEMO_TRAFFIC

    batch = FlowDecoder().decode(
        [Datagram(d.payload, d.exporter, 2055, 1.8e9) for d in read_capture(DEMO_TRAFFIC)]
    )
    constituency = Constituency([ipaddress.ip_network(c) for c in DEMO_CONSTITUENCY])
    groups: dict[str, Any] = {}
    for partial in scan_partials(batch, constituency, WINDOW):
        groups[group_key(partial)] = merge(groups.get(group_key(partial)), partial, max_hosts=16)
    rows = [
        {"src": str(bytes16_to_ip(r["src_addr"])), "dst": str(bytes16_to_ip(r["dst_addr"])), "dport": r["dst_port"],
         "proto": r["protocol"], "flags": r["tcp_flags"], "packets": r["packets"], "octets": r["octets"],
         "exporter": str(bytes16_to_ip(r["exporter"])), "end": r["flow_end"], "received": r["time_received"]}
        for r in batch.to_pylist()
    ]  # fmt: skip
    nets = [ipaddress.ip_network(c) for c in DEMO_CONSTITUENCY]
    expected = {}
    for f in rows:  # the reference, with the demo's constituency
        src, dst = ipaddress.ip_address(f["src"]), ipaddress.ip_address(f["dst"])
        if any(src in n for n in nets) or not any(dst in n for n in nets):
            continue
        probe = (f["proto"] == 6 and f["flags"] & 0x12 == 0x02) or (f["proto"] != 6 and f["packets"] <= 1)
        g = expected.setdefault(
            (f["src"], f["proto"], f["dport"]), {"flows": 0, "probe": 0, "targets": set()}
        )
        g["flows"] += 1
        g["probe"] += probe
        g["targets"].add(f["dst"])
    expected = {k: g for k, g in expected.items() if g["probe"]}
    got = {(g["scan"]["scanner"], g["scan"]["protocol"], g["scan"]["port"]): g for g in groups.values()}
    assert set(got) == set(expected)
    for key, want in expected.items():
        assert got[key]["hosts"][""]["flows"] == want["flows"]
        assert set(got[key]["scan"]["targets"]) == want["targets"]
    scanner = got[("203.0.113.200", 6, 23)]
    assert len(scanner["scan"]["targets"]) == 80 and scanner["hosts"][""]["probe_flows"] == 80
    assert scanner["exporters"] == ["192.0.2.1", "192.0.2.2"]
    confirmed = [
        g["key"]
        for g in groups.values()
        for _, r in render(g, DetectionConfig(), 0)
        if r["state"] == "confirmed"
    ]
    assert confirmed == ["scan|203.0.113.200|6|23"]


def test_bad_rows_are_counted_not_fatal() -> None:
    """A flow with neither time is counted and left out; a null number counts as 0, a null exporter as ::."""
    flows = [{"src": "203.0.113.5", "dst": f"192.0.2.{i}", "dport": 22, "flags": 0x02} for i in range(1, 11)]
    batch = flow_batch(flows)
    schema = pa.schema([f.with_nullable(True) for f in batch.schema])
    columns = dict(zip(batch.schema.names, batch.columns, strict=True))
    rows = {"flow_end": (0, 1), "time_received": (0, 1), "exporter": (2, 3), "octets": (4,)}
    for name, null_rows in rows.items():
        mask = pa.array([i in null_rows for i in range(10)])
        columns[name] = pa.compute.if_else(mask, pa.scalar(None, columns[name].type), columns[name])
    bad = pa.RecordBatch.from_arrays([columns[n] for n in schema.names], schema=schema)
    stats = ScanStats()
    (partial,) = scan_partials(bad, CONSTITUENCY, WINDOW, stats=stats)
    assert stats.untimed_flows == 2
    assert partial["hosts"][0]["flows"] == 8 and partial["hosts"][0]["bytes"] == 700
    assert len(partial["scan"]["targets"]) == 8 and partial["exporters"] == ["192.0.2.254", "::"]


def test_bound_applies_to_groups_across_windows() -> None:
    """Six probing keys in two windows each: twelve groups; with a bound of eight the four with the
    fewest distinct targets go (the prefilter's bound on keys does not act: six keys fit)."""
    flows = []
    for k in range(6):
        for w, targets in ((0, 2 + k), (1, 10 + k)):
            flows += [{"src": f"203.0.113.{k}", "dst": f"192.0.2.{t + 1}", "dport": 22, "flags": 0x02,
                       "time": T0 + timedelta(seconds=WINDOW * w)} for t in range(targets)]  # fmt: skip
    stats = ScanStats()
    partials = scan_partials(flow_batch(flows), CONSTITUENCY, WINDOW, max_groups=8, stats=stats)
    assert stats.groups_dropped == 4
    kept = sorted(len(p["scan"]["targets"]) for p in partials)
    assert kept == [6, 7, 10, 11, 12, 13, 14, 15]
