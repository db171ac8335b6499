"""Independent truth for the bundled demo: tshark's decoding of the sample pcap, and a naive
``ipaddress`` reference of the sample intel's active indicators (written out by hand, not loaded)."""

from __future__ import annotations

import ipaddress
import socket
import subprocess

from pipeline.samples import DEMO_TRAFFIC

# The sample intel's active indicators (valid, not revoked), written out independently of the loader.
ACTIVE = [
    (ipaddress.ip_network("203.0.113.66/32"), "any", None),
    (ipaddress.ip_network("198.51.100.0/25"), "any", None),
    (ipaddress.ip_network("203.0.113.80/32"), "dst", 4444),
    (ipaddress.ip_network("2001:db8:bad::1/128"), "any", None),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tshark_flows() -> list[tuple[str, str, int, int]]:
    fields = [
        "cflow.srcaddr",
        "cflow.dstaddr",
        "cflow.srcaddrv6",
        "cflow.dstaddrv6",
        "cflow.srcport",
        "cflow.dstport",
    ]
    cmd = [
        "tshark",
        "-r",
        str(DEMO_TRAFFIC),
        "-d",
        "udp.port==2055,cflow",
        "-d",
        "udp.port==4739,cflow",
        "-T",
        "fields",
    ]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    flows = []
    for line in out.splitlines():
        s4, d4, s6, d6, sp, dp = (c.split(",") if c else [] for c in line.split("\t"))
        src, dst = s4 or s6, d4 or d6
        flows += list(zip(src, dst, map(int, sp), map(int, dp), strict=True))
    return flows


def expected_hits(flows: list[tuple[str, str, int, int]]) -> set[tuple]:
    """(src, dst, sport, dport, side) of every hit of the sample intel on ``flows``."""
    out = set()
    for src, dst, sport, dport in flows:
        for side, addr in (("src", src), ("dst", dst)):
            for net, want_side, port in ACTIVE:
                if ipaddress.ip_address(addr) in net and want_side in ("any", side) and port in (None, dport):
                    out.add((src, dst, sport, dport, side))
    return out


def expected_alerts() -> set[tuple]:
    return expected_hits(tshark_flows())
