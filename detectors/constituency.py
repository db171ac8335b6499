"""The constituency: the address ranges and AS numbers of this network's own users.

It decides which side of a flow is "inside" (scan detection) and, for the sharing policy, which
addresses are personal data that must never leave. Membership is answered for whole flow batches:
merged ranges sorted once, then one ``searchsorted`` per address family.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detectors.addresses import Addresses
from pipeline.config import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ConstituencyConfig:
    cidrs: tuple[str, ...] = ()
    asns: tuple[str, ...] = ()
    """AS numbers (``64500`` or ``AS64500``): a flow end whose AS field carries one is inside."""
    files: tuple[str, ...] = ()
    """Text files of CIDRs and ``AS<number>`` entries, one per line, ``#`` comments."""


class Constituency:
    def __init__(self, networks: Iterable[Network] = (), asns: Iterable[int] = ()) -> None:
        nets = list(networks)
        self.networks: list[Network] = [
            *ipaddress.collapse_addresses(n for n in nets if n.version == 4),
            *ipaddress.collapse_addresses(n for n in nets if n.version == 6),
        ]
        v4 = [(int(n.network_address), int(n.broadcast_address)) for n in self.networks if n.version == 4]
        self.v4_first = np.array([a for a, _ in v4], dtype=np.uint32)
        self.v4_last = np.array([b for _, b in v4], dtype=np.uint32)
        v6 = [n for n in self.networks if n.version == 6]
        self.v6_first = [int(n.network_address) for n in v6]
        self.v6_last = [int(n.broadcast_address) for n in v6]
        self.asns = np.array(sorted(set(asns)), dtype=np.int64)

    @classmethod
    def from_config(cls, config: ConstituencyConfig) -> Constituency:
        networks: list[Network] = []
        asns: list[int] = []
        entries = [(c, "constituency.cidrs") for c in config.cidrs]
        entries += [(a if a.upper().startswith("AS") else f"AS{a}", "constituency.asns") for a in config.asns]
        for name in config.files:
            try:
                lines = Path(name).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"constituency.files: cannot read {name}: {exc}") from None
            entries += [(line.split("#", 1)[0].strip(), name) for line in lines]
        for text, where in entries:
            if not text:
                continue
            try:
                if text.upper().startswith("AS"):
                    asns.append(int(text[2:]))
                else:
                    networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise ConfigError(f"{where}: not a CIDR or AS number: {text!r}") from None
        return cls(networks, asns)

    def __bool__(self) -> bool:
        return bool(self.networks) or bool(len(self.asns))

    def contains_addresses(self, addrs: Addresses) -> np.ndarray:
        """Boolean per address: inside one of the ranges."""
        out = np.zeros(len(addrs), dtype=bool)
        if len(self.v4_first):
            pos = np.searchsorted(self.v4_first, addrs.v4, side="right") - 1
            ok = pos >= 0
            ok &= addrs.v4 <= self.v4_last[np.maximum(pos, 0)]
            out |= ok & addrs.is_v4
        if self.v6_first and not addrs.all_v4:
            rows = np.flatnonzero(~addrs.is_v4)
            hi, lo = addrs.hilo(rows)
            inside = np.zeros(len(rows), dtype=bool)
            for first, last in zip(self.v6_first, self.v6_last, strict=True):  # ranges are few: loop them
                f_hi, f_lo = np.uint64(first >> 64), np.uint64(first & (2**64 - 1))
                l_hi, l_lo = np.uint64(last >> 64), np.uint64(last & (2**64 - 1))
                ge = (hi > f_hi) | ((hi == f_hi) & (lo >= f_lo))
                le = (hi < l_hi) | ((hi == l_hi) & (lo <= l_lo))
                inside |= ge & le
            out[rows] = inside
        return out

    def contains(self, addrs: Addresses, asn: np.ndarray | None = None) -> np.ndarray:
        """Inside by address, or by the flow's AS field (``asn``, int64, 0/-1 = unknown)."""
        inside = self.contains_addresses(addrs)
        if asn is not None and len(self.asns):
            inside |= np.isin(asn, self.asns) & (asn > 0)
        return inside

    def contains_ip(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """One address (the sharing policy's check of outgoing objects)."""
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in n for n in self.networks if n.version == ip.version)
