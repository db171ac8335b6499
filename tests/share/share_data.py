"""Detections for the sharing tests: made field by field as the confirmation engine writes them, and
checked against ``schemas/detection/v1.json`` so the tests feed the sharer what it really receives."""

from __future__ import annotations

import ipaddress
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = jsonschema.Draft202012Validator(
    json.loads((ROOT / "schemas" / "detection" / "v1.json").read_text()),
    format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
)
WINDOW = 300


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def detection(
    *, kind: str = "indicator", indicator: str | None = None, host: str | None = "192.0.2.10",
    window_start: datetime | None = None, state: str = "confirmed", flows: int = 5, hosts: int = 1,
    tlp: str | None = "green", confidence: int | None = 80, sources: tuple[str, ...] = ("partner-feed",),
    updated_s: float = 10.0, final: bool = False, scanner: str = "203.0.113.200", port: int = 23,
    targets: int = 80, reason: str | None = None, network: str = "test-nren", value: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    start = window_start or datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    indicator = indicator or f"indicator--{uuid.uuid4()}"
    key = indicator if kind == "indicator" else f"scan|{scanner}|6|{port}"
    internal = host if kind == "indicator" else None
    first = start + timedelta(seconds=1)
    updated = start + timedelta(seconds=updated_s)
    feedback = None
    if state == "false_positive" or reason is not None:
        feedback = {"verdict": "false_positive" if state == "false_positive" else "confirm", "reason": reason,
                    "analyst": "analyst1", "at": iso(updated)}  # fmt: skip
    record = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{network}|{kind}|{key}|{internal}|{iso(start)}")),
        "network": network, "kind": kind, "key": key, "internal_host": internal,
        "window_start": iso(start), "window_end": iso(start + timedelta(seconds=WINDOW)),
        "state": state, "rule": None if state == "observed" else ("analyst" if feedback else "r1"),
        "final": final, "updated": iso(updated), "flows": flows, "packets": flows * 3, "bytes": flows * 400,
        "first_seen": iso(first), "last_seen": iso(first + timedelta(seconds=flows)),
        "internal_hosts": targets if kind == "scan" else hosts, "established_flows": 0 if kind == "scan" else flows,
        "probe_flows": flows if kind == "scan" else 0, "exporters": ["198.18.0.1"],
        "confidence": confidence if kind == "indicator" else None, "tlp": tlp,
        "sources": list(sources) if kind == "indicator" else [network],
        "indicator": None if kind == "scan" else {
            "id": indicator, "value": value or "[ipv4-addr:value = '203.0.113.66']", "name": "test indicator",
            "sides": ["dst"], "valid_until": None},
        "scan": None if kind == "indicator" else {
            "scanner": scanner, "protocol": 6, "port": port, "targets": targets, "targets_exact": True},
        "feedback": feedback,
    }  # fmt: skip
    SCHEMA.validate(record)
    return record


def addresses(draw: st.DrawFn, nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """An address inside one of ``nets`` or anywhere (v4 or v6)."""
    if nets and draw(st.booleans()):
        net = draw(st.sampled_from(nets))
        return str(net.network_address + draw(st.integers(0, net.num_addresses - 1)))
    if draw(st.booleans()):
        return str(ipaddress.IPv4Address(draw(st.integers(1, 2**32 - 2))))
    return str(ipaddress.IPv6Address(draw(st.integers(1, 2**128 - 2))))


@st.composite
def constituencies(draw: st.DrawFn) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            prefix = draw(st.integers(8, 32))
            nets.append(ipaddress.IPv4Network((draw(st.integers(0, 2**32 - 1)), prefix), strict=False))
        else:
            prefix = draw(st.integers(16, 128))
            nets.append(ipaddress.IPv6Network((draw(st.integers(0, 2**128 - 1)), prefix), strict=False))
    return nets


def _reason(draw: st.DrawFn, nets: list[Any]) -> str | None:
    """An analyst's free text: sometimes naming an address (their own host, even)."""
    choice = draw(st.sampled_from(["none", "text", "address"]))
    if choice == "none":
        return None
    return draw(st.text(max_size=20)) if choice == "text" else f"our own scanner at {addresses(draw, nets)}"


@st.composite
def detection_sets(draw: st.DrawFn, nets: list[Any]) -> list[dict[str, Any]]:
    """Detections of a few indicators and scanners over two windows, hosts and scanners drawn inside
    and outside the constituency, in every state."""
    base = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    indicators = [
        f"indicator--{uuid.UUID(int=draw(st.integers(0, 2**128 - 1)), version=4)}" for _ in range(3)
    ]
    out = []
    for _ in range(draw(st.integers(1, 12))):
        start = base + timedelta(seconds=WINDOW * draw(st.integers(0, 1)))
        state = draw(st.sampled_from(["confirmed", "confirmed", "observed", "false_positive"]))
        tlp = draw(st.sampled_from(["clear", "green", "amber", "amber+strict", "red", None]))
        if draw(st.integers(0, 3)) == 0:
            out.append(detection(kind="scan", scanner=addresses(draw, nets), window_start=start, state=state,
                                 tlp=tlp, port=draw(st.integers(0, 65535)), targets=draw(st.integers(1, 5000)),
                                 flows=draw(st.integers(1, 10_000)), updated_s=draw(st.integers(1, 600))))  # fmt: skip
        else:
            out.append(detection(indicator=draw(st.sampled_from(indicators)), host=addresses(draw, nets),
                                 window_start=start, state=state, tlp=tlp, flows=draw(st.integers(1, 10_000)),
                                 confidence=draw(st.one_of(st.none(), st.integers(0, 100))),
                                 updated_s=draw(st.integers(1, 600)), reason=_reason(draw, nets),
                                 value=f"[ipv4-addr:value = '{addresses(draw, nets)}']"))  # fmt: skip
    return out
