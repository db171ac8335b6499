"""Play captured export packets (pcap/pcapng) into a collector over UDP.

Used by ``shoal run --demo``. Each original exporter gets its own sending socket, so the collector
still sees distinct exporters (distinct source ports) and keeps their templates and sequence numbers
apart. Export timestamps in the packet headers are moved to "now" so the flows look current; flow
times relative to the header (sysUptime, IPFIX delta IEs) move with them.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dpkt


@dataclass(frozen=True)
class CapturedDatagram:
    exporter: str
    exporter_port: int
    collector_port: int
    payload: bytes


def read_capture(path: Path) -> Iterator[CapturedDatagram]:
    """UDP payloads of a pcap or pcapng file (Ethernet or raw IP link types)."""
    with path.open("rb") as fh:
        magic = fh.read(4)
        fh.seek(0)
        reader = dpkt.pcapng.Reader(fh) if magic == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(fh)
        raw_ip = reader.datalink() in (dpkt.pcap.DLT_RAW, 101)
        for _, frame in reader:
            ip = _ip_layer(frame, raw_ip)
            if ip is None or not isinstance(ip.data, dpkt.udp.UDP):
                continue
            src = socket.inet_ntop(
                socket.AF_INET6 if isinstance(ip, dpkt.ip6.IP6) else socket.AF_INET, ip.src
            )
            udp = ip.data
            yield CapturedDatagram(src, udp.sport, udp.dport, bytes(udp.data))


def _ip_layer(frame: bytes, raw_ip: bool) -> dpkt.ip.IP | dpkt.ip6.IP6 | None:
    try:
        if raw_ip:
            return dpkt.ip6.IP6(frame) if frame[:1] and frame[0] >> 4 == 6 else dpkt.ip.IP(frame)
        eth = dpkt.ethernet.Ethernet(frame)
    except (dpkt.UnpackError, IndexError):
        return None
    return eth.data if isinstance(eth.data, dpkt.ip.IP | dpkt.ip6.IP6) else None


def restamp(payload: bytes, now: int) -> bytes:
    """Move the header's export time to ``now`` (v5/v9: unix_secs at offset 8; IPFIX: offset 4)."""
    if len(payload) < 16:
        return payload
    version = struct.unpack_from("!H", payload)[0]
    offset = {5: 8, 9: 8, 10: 4}.get(version)
    if offset is None:
        return payload
    out = bytearray(payload)
    struct.pack_into("!I", out, offset, now)
    return bytes(out)


def replay(path: Path, host: str, port_map: dict[int, int] | None = None, pace_seconds: float = 0.0) -> int:
    """Send every UDP payload of ``path`` to ``host``; the destination port is the captured one,
    mapped through ``port_map``. Returns the number of datagrams sent."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    senders: dict[tuple[str, int], socket.socket] = {}
    sent = 0
    try:
        for dgram in read_capture(path):
            key = (dgram.exporter, dgram.exporter_port)
            sock = senders.get(key)
            if sock is None:
                sock = senders[key] = socket.socket(family, socket.SOCK_DGRAM)
            port = (port_map or {}).get(dgram.collector_port, dgram.collector_port)
            sock.sendto(restamp(dgram.payload, int(time.time())), (host, port))
            sent += 1
            if pace_seconds:
                time.sleep(pace_seconds)
    finally:
        for sock in senders.values():
            sock.close()
    return sent
