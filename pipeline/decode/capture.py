"""Export packets from a capture file (pcap or pcapng) as decoder :class:`Datagram`s.

``received`` is the capture timestamp, so decoding an old capture gives the flows the times a
collector would have stamped then, not "now". Frames that are not UDP over IPv4/IPv6 (ARP, fragments
dpkt cannot parse, other link types) are skipped and counted, never raised.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

from pipeline.decode.datagram import Datagram

_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_RAW_LINKTYPES = (dpkt.pcap.DLT_RAW, 101)  # 101: LINKTYPE_RAW as written in pcap files


@dataclass
class CaptureStats:
    frames: int = 0
    datagrams: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def read_datagrams(
    path: str | Path, ports: frozenset[int] | None = None, stats: CaptureStats | None = None
) -> Iterator[Datagram]:
    """UDP payloads of ``path`` (Ethernet, Linux cooked or raw-IP link types). ``ports`` keeps only
    datagrams sent to those destination ports (None: every UDP datagram)."""
    stats = stats if stats is not None else CaptureStats()
    with Path(path).open("rb") as fh:
        magic = fh.read(4)
        fh.seek(0)
        reader = dpkt.pcapng.Reader(fh) if magic == _PCAPNG_MAGIC else dpkt.pcap.Reader(fh)
        linktype = reader.datalink()
        for ts, frame in reader:
            stats.frames += 1
            ip = _ip_layer(frame, linktype)
            if ip is None:
                stats.skip("not_ip")
                continue
            udp = ip.data
            if not isinstance(udp, dpkt.udp.UDP):
                stats.skip("not_udp")
                continue
            if ports is not None and udp.dport not in ports:
                stats.skip("other_port")
                continue
            family = socket.AF_INET6 if isinstance(ip, dpkt.ip6.IP6) else socket.AF_INET
            stats.datagrams += 1
            yield Datagram(bytes(udp.data), socket.inet_ntop(family, ip.src), udp.sport, float(ts))


def _ip_layer(frame: bytes, linktype: int) -> dpkt.ip.IP | dpkt.ip6.IP6 | None:
    try:
        if linktype in _RAW_LINKTYPES:
            return dpkt.ip6.IP6(frame) if frame[:1] and frame[0] >> 4 == 6 else dpkt.ip.IP(frame)
        if linktype == dpkt.pcap.DLT_LINUX_SLL:
            inner = dpkt.sll.SLL(frame).data
        else:
            inner = dpkt.ethernet.Ethernet(frame).data
    except (dpkt.UnpackError, IndexError, ValueError):
        return None
    return inner if isinstance(inner, dpkt.ip.IP | dpkt.ip6.IP6) else None
