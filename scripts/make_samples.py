"""Regenerate Shoal's bundled demo intel and demo traffic (``pipeline/samples/``).

Everything uses documentation address ranges only (RFC 5737: 192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24; RFC 3849: 2001:db8::/32), so the samples can never point at a real host. Intel is
built with the stix2 library and traffic with scapy's NetFlow encoders, so the demo also exercises
Shoal against encoders that are not its own. Run: ``.venv/bin/python scripts/make_samples.py``.
"""

from __future__ import annotations

import ipaddress
import random
from datetime import UTC, datetime
from pathlib import Path

import stix2
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.netflow import (
    GetNetflowRecordV9,
    NetflowDataflowsetV9,
    NetflowFlowsetV9,
    NetflowHeader,
    NetflowHeaderV5,
    NetflowHeaderV9,
    NetflowHeaderV10,
    NetflowRecordV5,
    NetflowTemplateFieldV9,
    NetflowTemplateV9,
)
from scapy.utils import wrpcap

OUT = Path(__file__).resolve().parent.parent / "pipeline" / "samples"
EPOCH = int(datetime(2026, 11, 1, 12, 0, tzinfo=UTC).timestamp())
CAMPUS_V4 = ipaddress.ip_network("192.0.2.0/24")
CAMPUS_V6 = ipaddress.ip_network("2001:db8:c0::/48")
BENIGN_V4 = ipaddress.ip_network("198.51.100.128/25")
BENIGN_V6 = ipaddress.ip_network("2001:db8:f00d::/48")

# The campus ranges are the demo's constituency (pipeline.samples.DEMO_CONSTITUENCY).
# An outside address no indicator names, probing 80 campus addresses on telnet with lone SYNs: only
# behaviour can find it. Its flows ride in packets 5 and 6 of the v5 and v9 exporters (20 per packet,
# sent within a few hundredths of a second, so a replay puts them all in one window).
SCANNER, SCAN_PORT = "203.0.113.200", 23
SCAN_TARGETS = [str(CAMPUS_V4[160 + k]) for k in range(80)]
SCAN_PACKETS = (5, 6)

# (address, dst_port) pairs the demo traffic visits besides benign hosts, and whether they should alert.
HOT = [
    ("203.0.113.66", 443, "C2 server: alerts"),
    ("198.51.100.23", 22, "inside the scanner /25: alerts"),
    ("203.0.113.80", 4444, "drop server on its port: alerts"),
    ("203.0.113.80", 443, "drop server, other port: no alert (the indicator names port 4444)"),
    ("2001:db8:bad::1", 443, "IPv6 C2: alerts"),
    ("203.0.113.99", 80, "expired indicator: no alert"),
    ("203.0.113.77", 80, "revoked indicator: no alert"),
]


def build_intel() -> stix2.Bundle:
    cert = stix2.Identity(name="Demo NREN CERT hub", identity_class="organization")
    tlp_green = stix2.TLP_GREEN
    common = {"created_by_ref": cert, "object_marking_refs": [tlp_green], "pattern_type": "stix"}
    future, past = "2099-01-01T00:00:00Z", "2021-06-01T00:00:00Z"
    start = "2026-01-01T00:00:00Z"
    indicators = [
        stix2.Indicator(
            name="Demo C2 server",
            pattern="[ipv4-addr:value = '203.0.113.66']",
            valid_from=start,
            valid_until=future,
            confidence=85,
            **common,
        ),
        stix2.Indicator(
            name="Demo scanning range",
            pattern="[ipv4-addr:value ISSUBSET '198.51.100.0/25']",
            valid_from=start,
            valid_until=future,
            confidence=60,
            **common,
        ),
        stix2.Indicator(
            name="Demo malware drop (port 4444 only)",
            pattern="[network-traffic:dst_ref.value = '203.0.113.80' AND network-traffic:dst_port = 4444]",
            valid_from=start,
            valid_until=future,
            confidence=90,
            **common,
        ),
        stix2.Indicator(
            name="Demo IPv6 C2",
            pattern="[ipv6-addr:value = '2001:db8:bad::1']",
            valid_from=start,
            valid_until=future,
            confidence=80,
            **common,
        ),
        stix2.Indicator(
            name="Demo expired indicator",
            pattern="[ipv4-addr:value = '203.0.113.99']",
            valid_from="2020-01-01T00:00:00Z",
            valid_until=past,
            confidence=80,
            **common,
        ),
        stix2.Indicator(
            name="Demo revoked indicator",
            pattern="[ipv4-addr:value = '203.0.113.77']",
            valid_from=start,
            valid_until=future,
            revoked=True,
            confidence=80,
            **common,
        ),
        stix2.Indicator(
            name="Demo phishing domain (not evaluable on flows)",
            pattern="[domain-name:value = 'login.example.org']",
            valid_from=start,
            valid_until=future,
            confidence=70,
            **common,
        ),
    ]
    return stix2.Bundle(cert, *indicators, allow_custom=False)


def pick(rng: random.Random, net: ipaddress._BaseNetwork) -> str:
    return str(net[rng.randrange(1, min(net.num_addresses - 1, 2**20))])


Flow = tuple[str, str, int, int, int, int, int, int]


def flows(rng: random.Random, count: int, v6: bool) -> list[Flow]:
    """(src, dst, sport, dport, proto, packets, octets, tcp flags): campus clients talking to the world."""
    out = []
    for _ in range(count):
        campus = pick(rng, CAMPUS_V6 if v6 else CAMPUS_V4)
        if rng.random() < 0.04:
            hot = [h for h in HOT if (":" in h[0]) == v6]
            remote, dport, _ = rng.choice(hot)
        else:
            remote, dport = pick(rng, BENIGN_V6 if v6 else BENIGN_V4), rng.choice([443, 80, 53, 123, 993])
        proto = 17 if dport in (53, 123) else 6
        sport, pkts = rng.randrange(1024, 65535), rng.randrange(1, 200)
        flags = 0x1B if proto == 6 else 0
        fwd = (campus, remote, sport, dport, proto, pkts, pkts * rng.randrange(60, 1400), flags)
        rev = (remote, campus, dport, sport, proto, pkts, pkts * rng.randrange(60, 1400), flags)
        out.append(fwd if rng.random() < 0.5 else rev)
    return out


def scan_flows(stream: int, index: int) -> list[Flow]:
    """The scanner's flows in packet ``index`` of exporter ``stream`` (0: v5, 1: v9): one SYN each."""
    if stream > 1 or index not in SCAN_PACKETS:
        return []
    part = 2 * stream + SCAN_PACKETS.index(index)
    targets = SCAN_TARGETS[20 * part : 20 * part + 20]
    return [(SCANNER, t, 40_000 + 20 * part + k, SCAN_PORT, 6, 1, 44, 0x02) for k, t in enumerate(targets)]


def v5_packets(rng: random.Random, n_packets: int) -> list:
    pkts = []
    for seq in range(n_packets):
        uptime = 3_600_000 + seq * 1000
        records = [
            NetflowRecordV5(
                src=s,
                dst=d,
                srcport=sp,
                dstport=dp,
                prot=pr,
                dpkts=pk,
                dOctets=oc,
                first=uptime - 5000,
                last=uptime - 100,
                input=1,
                output=2,
                tcpFlags=fl,
            )
            for s, d, sp, dp, pr, pk, oc, fl in flows(rng, 30 - len(scan_flows(0, seq)), v6=False)
            + scan_flows(0, seq)
        ]
        hdr = NetflowHeader() / NetflowHeaderV5(
            count=len(records),
            sysUptime=uptime,
            unixSecs=EPOCH + seq,
            flowSequence=seq * 30,
            samplingInterval=0,
        )
        pkts.append(_udp("192.0.2.1", 2055, hdr / b"".join(bytes(r) for r in records)))
    return pkts


V4_FIELDS = [
    (8, 4),
    (12, 4),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 1),
    (2, 4),
    (1, 4),
    (10, 4),
    (14, 4),
    (22, 4),
    (21, 4),
]
V6_FIELDS = [
    (27, 16),
    (28, 16),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 1),
    (2, 8),
    (1, 8),
    (10, 4),
    (14, 4),
    (158, 4),
    (159, 4),
]


def _template(template_id: int, fields: list[tuple[int, int]], ipfix: bool) -> NetflowFlowsetV9:
    tf = [NetflowTemplateFieldV9(fieldType=t, fieldLength=length) for t, length in fields]
    return NetflowFlowsetV9(
        flowSetID=2 if ipfix else 0,
        templates=[NetflowTemplateV9(templateID=template_id, fieldCount=len(tf), template_fields=tf)],
    )


def templated_packets(rng: random.Random, n_packets: int, version: int) -> list:
    """v9 (IPv4, sysUptime times) or IPFIX (IPv6, times as microseconds before export), template in every 10th packet."""
    v6 = version == 10
    tmpl = _template(260 if v6 else 256, V6_FIELDS if v6 else V4_FIELDS, ipfix=v6)
    record_cls = GetNetflowRecordV9(tmpl)
    names = [f.name for f in record_cls.fields_desc]
    pkts, seq = [], 0
    for i in range(n_packets):
        uptime, export = 3_600_000 + i * 1000, EPOCH + i
        records = []
        scan = scan_flows(1, i) if not v6 else []
        for s, d, sp, dp, pr, pk, oc, fl in flows(rng, 30 - len(scan), v6=v6) + scan:
            if v6:  # IPFIX: microseconds before the export time (IEs 158/159)
                start, end = 5_000_000, 100_000
            else:
                start, end = uptime - 5000, uptime - 100
            values = [s, d, sp, dp, pr, fl, pk, oc, 3, 4, start, end]
            records.append(record_cls(**dict(zip(names, values, strict=True))))
        data = NetflowDataflowsetV9(templateID=tmpl.templates[0].templateID, records=records)
        body = (tmpl / data) if i % 10 == 0 else data
        if v6:
            hdr = NetflowHeader(version=10) / NetflowHeaderV10(
                ExportTime=export, flowSequence=seq, ObservationDomainID=1
            )
            seq += len(records)
            raw = bytearray(bytes(hdr / body))
            raw[2:4] = len(raw).to_bytes(2, "big")  # scapy 2.6-2.8 miscounts the IPFIX message length
            pkts.append(_udp("2001:db8::1", 4739, bytes(raw)))
        else:
            count = len(records) + (1 if i % 10 == 0 else 0)
            hdr = NetflowHeader(version=9) / NetflowHeaderV9(
                count=count, sysUptime=uptime, unixSecs=export, packageSequence=i, SourceID=1
            )
            pkts.append(_udp("192.0.2.2", 2055, hdr / body))
    return pkts


def _udp(exporter: str, dport: int, payload):
    ip = IPv6(src=exporter, dst="2001:db8::100") if ":" in exporter else IP(src=exporter, dst="192.0.2.100")
    return (
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / ip
        / UDP(sport=50000, dport=dport)
        / bytes(payload)
    )


def main() -> None:
    rng = random.Random(20261101)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "demo-intel.json").write_text(build_intel().serialize(pretty=True) + "\n")
    streams = [v5_packets(rng, 20), templated_packets(rng, 20, 9), templated_packets(rng, 20, 10)]
    # Interleave the three exporters as a collector would see them; each keeps its own order.
    packets = [p for group in zip(*streams, strict=True) for p in group]
    wrpcap(str(OUT / "demo-traffic.pcap"), packets)
    print(f"wrote {OUT / 'demo-intel.json'} and {OUT / 'demo-traffic.pcap'} ({len(packets)} packets)")


if __name__ == "__main__":
    main()
