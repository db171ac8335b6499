"""The constituency guard: no address of the network's own users in anything that leaves.

It reads the exact text a destination would send (STIX JSON, a MISP request body, a feed file) and
finds every IPv4 and IPv6 literal in it, CIDR network addresses and IPv4-mapped forms included, so
it holds whatever the object builder or a destination did: a check of the output, not of the intent.
"""

from __future__ import annotations

import ipaddress
import re

from detectors.constituency import Constituency

_V4 = re.compile(r"(?<![0-9.])(?:\d{1,3}\.){3}\d{1,3}(?![0-9])")
_V6 = re.compile(r"(?<![0-9A-Fa-f:.])[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]*[0-9A-Fa-f.:](?![0-9A-Fa-f])")


def addresses_in(text: str) -> set[str]:
    """Every address literal in ``text`` (IPv6 written out, IPv4-mapped ones as IPv4 too)."""
    found: set[str] = set()
    for match in _V4.finditer(text):
        try:
            found.add(str(ipaddress.IPv4Address(match.group())))
        except ValueError:
            continue
    for match in _V6.finditer(text):
        candidate = match.group()
        try:
            ip = ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        found.add(str(ip))
        if ip.ipv4_mapped is not None:
            found.add(str(ip.ipv4_mapped))
    return found


class ConstituencyGuard:
    def __init__(self, constituency: Constituency) -> None:
        self.constituency = constituency

    def constituents_in(self, text: str) -> list[str]:
        """The constituent addresses ``text`` holds (empty: it may leave)."""
        if not self.constituency.networks:
            return []
        return sorted(a for a in addresses_in(text) if self.constituency.contains_ip(a))
