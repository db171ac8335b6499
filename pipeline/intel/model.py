"""Normalised indicators: what every intel format compiles to, and what the index is built from.

An indicator is an OR of *conditions*; a condition is an AND of constraints that one flow can answer
(an address or prefix on a side, ports, protocols, the other side's address, an AS number).
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Side = Literal["any", "src", "dst"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Condition:
    """One conjunction. ``network`` is the indexed constraint; if absent, ``asn`` is."""

    network: Network | None = None
    side: Side = "any"
    asn: int | None = None
    src_ports: frozenset[int] | None = None
    dst_ports: frozenset[int] | None = None
    protocols: frozenset[int] | None = None
    other_network: Network | None = None
    """An address constraint on the side opposite to where ``network`` matched (src_ref AND dst_ref)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"side": self.side}
        if self.network is not None:
            out["network"] = str(self.network)
        if self.other_network is not None:
            out["other_network"] = str(self.other_network)
        if self.asn is not None:
            out["asn"] = self.asn
        for name in ("src_ports", "dst_ports", "protocols"):
            value = getattr(self, name)
            if value is not None:
                out[name] = sorted(value)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Condition:
        def net(key: str) -> Network | None:
            return ipaddress.ip_network(d[key]) if key in d else None

        def ints(key: str) -> frozenset[int] | None:
            return frozenset(d[key]) if key in d else None

        return cls(net("network"), d.get("side", "any"), d.get("asn"), ints("src_ports"), ints("dst_ports"),
                   ints("protocols"), net("other_network"))  # fmt: skip


@dataclass(frozen=True)
class Indicator:
    id: str
    """STIX indicator id or MISP attribute uuid (list entries: source name + value)."""
    value: str
    """The pattern or value as the source wrote it."""
    source: str
    conditions: tuple[Condition, ...]
    name: str | None = None
    confidence: int | None = None
    tlp: str | None = None
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    revoked: bool = False
    labels: tuple[str, ...] = field(default=())

    def active_at(self, when: datetime) -> bool:
        if self.revoked:
            return False
        if self.valid_from is not None and when < self.valid_from:
            return False
        return self.valid_until is None or when < self.valid_until

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["conditions"] = [c.to_dict() for c in self.conditions]
        for key in ("valid_from", "valid_until"):
            d[key] = d[key].isoformat() if d[key] is not None else None
        d["labels"] = list(self.labels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Indicator:
        return cls(
            id=d["id"], value=d["value"], source=d["source"],
            conditions=tuple(Condition.from_dict(c) for c in d["conditions"]),
            name=d.get("name"), confidence=d.get("confidence"), tlp=d.get("tlp"),
            valid_from=parse_time(d.get("valid_from")), valid_until=parse_time(d.get("valid_until")),
            revoked=bool(d.get("revoked", False)), labels=tuple(d.get("labels", ())),
        )  # fmt: skip


def parse_time(value: Any) -> datetime | None:
    """ISO 8601 / STIX timestamps and unix seconds to aware UTC datetimes."""
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        if isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
            return datetime.fromtimestamp(int(value), UTC)
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except (OverflowError, OSError, ValueError) as exc:  # 1e300, year 10^20, NaN: that item is bad
        raise ValueError(
            f"time {str(value)[:40]!r} out of range or malformed ({type(exc).__name__})"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
