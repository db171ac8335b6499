"""Independent truth for decoder tests: tshark's cflow dissector reading the same bytes from a pcap."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

FIELDS = ("srcaddr", "dstaddr", "srcaddrv6", "dstaddrv6", "srcport", "dstport", "protocol", "packets",
          "octets", "inputint", "outputint", "tcpflags")  # fmt: skip


NUMERIC = {
    "src_port": "srcport",
    "dst_port": "dstport",
    "protocol": "protocol",
    "packets": "packets",
    "octets": "octets",
    "input_if": "inputint",
    "output_if": "outputint",
    "tcp_flags": "tcpflags",
}


def have_tshark() -> bool:
    return shutil.which("tshark") is not None


def tshark_flows(payloads: list[bytes], tmp: Path, port: int = 2055) -> list[dict]:
    """Flow records as tshark decodes them, in packet order."""
    pcap = tmp / "oracle.pcap"
    frames = [
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="192.0.2.1", dst="192.0.2.2")
        / UDP(sport=50000, dport=port)
        / p
        for p in payloads
    ]
    wrpcap(str(pcap), frames)
    return tshark_pcap_flows(pcap, [port])


def tshark_pcap_flows(pcap: Path, ports: list[int]) -> list[dict]:
    """Flow records tshark decodes from an existing capture file, export packets on ``ports``."""
    cmd = ["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=\t"]
    for port in ports:
        cmd += ["-d", f"udp.port=={port},cflow"]
    for f in FIELDS:
        cmd += ["-e", f"cflow.{f}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    flows: list[dict] = []
    for line in out.splitlines():
        cols = [c.split(",") if c else [] for c in line.split("\t")]
        values = dict(zip(FIELDS, cols, strict=True))
        n = max(len(values["srcaddr"]), len(values["srcaddrv6"]))
        for i in range(n):
            flow = {
                "src_addr": ipaddress.ip_address((values["srcaddr"] or values["srcaddrv6"])[i]),
                "dst_addr": ipaddress.ip_address((values["dstaddr"] or values["dstaddrv6"])[i]),
            }
            for ours, theirs in NUMERIC.items():
                if values[theirs]:
                    flow[ours] = int(values[theirs][i], 0)
            flows.append(flow)
    return flows
