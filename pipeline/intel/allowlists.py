"""Allowlists: MISP warninglists and local CIDR lists of known-good ranges that must not alert.

An entry is a network, optionally with a port (``ip|port`` values, misp-warninglists #212). Suppression
is per matched address, so an indicator prefix that only partly overlaps an allowlisted range still
fires for the addresses outside it.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.intel.load import IntelError
from pipeline.intel.model import Network


@dataclass
class Allowlist:
    entries: list[tuple[Network, int | None, str]] = field(default_factory=list)
    """(network, port or None, list name)."""
    ignored: int = 0
    """Entries that apply to no flow field (hostnames, strings that are not addresses)."""


def load_allowlist(path: Path, into: Allowlist | None = None) -> Allowlist:
    """A MISP warninglist (JSON with ``type`` and ``list``) or a plain file of CIDRs."""
    out = into if into is not None else Allowlist()
    try:
        text = path.read_text()
    except OSError as exc:
        raise IntelError(f"{path}: {exc}") from exc
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise IntelError(f"{path}: not readable JSON ({exc})") from exc
        name, values = data.get("name", path.parent.name), data.get("list", [])
    else:
        name, values = path.stem, [line.split("#", 1)[0].strip() for line in text.splitlines()]
    for raw in values:
        value = str(raw).strip()
        if not value:
            continue
        address, sep, port = value.partition("|")
        try:
            network = ipaddress.ip_network(address, strict=False)
            out.entries.append((network, int(port) if sep else None, name))
        except ValueError:
            out.ignored += 1
    return out
