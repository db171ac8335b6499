"""Detections to shares: STIX 2.1 objects made by the stix2 library, with deterministic ids.

One sighting per (indicator, window), summed over the confirmed detections of every internal host of
that window; a confirmed scan gives a new indicator of the scanner (short validity) and its sighting; an
analyst's false positive gives an Opinion (``strongly-disagree``) on the feed's indicator, which MISP
receivers turn into a false-positive sighting. Ids are uuid5 over this network's identity and what the
object is about, so a re-send is the same object and an update a new version (``modified``) of it.

What a detection knows about the network's own users (internal hosts, exporters) never enters an
object: victims are counted (``internal_hosts``), never listed.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import stix2

from pipeline.intel.stix import TLP_IDS
from pipeline.share.destinations.base import Share, ShareContext
from pipeline.share.guard import ConstituencyGuard
from pipeline.share.policy import SharingPolicy, strictest, tlp_level

TLP2_EXTENSION = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
TLP2_CREATED = "2022-10-01T00:00:00.000Z"
_TLP1_IDS = {m.id for m in (stix2.TLP_WHITE, stix2.TLP_GREEN, stix2.TLP_AMBER, stix2.TLP_RED)}
TLP2_IDS = {level: ident for ident, level in TLP_IDS.items() if ident not in _TLP1_IDS}
"""TLP 2.0 level -> the marking-definition id fixed by the TLP 2.0 extension."""
STIX_ID = re.compile(r"^indicator--[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}


def _json(obj: Any) -> dict[str, Any]:
    return json.loads(obj.serialize())


def tlp_marking(level: str) -> dict[str, Any]:
    """The TLP 2.0 marking definition of ``level`` (an extension-defined marking, as FIRST publishes)."""
    name = "TLP:" + level.upper()
    ext = {TLP2_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": level}}
    marking = stix2.MarkingDefinition(id=TLP2_IDS[level], created=TLP2_CREATED, name=name, extensions=ext)
    return _json(marking)


def context(policy: SharingPolicy) -> ShareContext:
    ident = policy.identity
    kwargs: dict[str, Any] = {"id": ident.stix_id(), "name": ident.name, "identity_class": ident.identity_class,
                              "created": "2020-01-01T00:00:00.000Z", "modified": "2020-01-01T00:00:00.000Z"}  # fmt: skip
    if ident.contact:
        kwargs["contact_information"] = ident.contact
    if ident.sectors:
        kwargs["sectors"] = list(ident.sectors)
    identity = _json(stix2.Identity(**kwargs))
    return ShareContext(identity, {level: tlp_marking(level) for level in TLP2_IDS})


def shared_indicator_ref(indicator_id: str) -> str | None:
    """The STIX id partners know a feed's indicator by: its own id (STIX feeds), or ``indicator--``
    + the attribute uuid (MISP, as MISP's own STIX export names it); None for list entries."""
    text = indicator_id.lower()
    if STIX_ID.match(text):
        text = text.removeprefix("indicator--")
    elif not UUID.match(text):
        return None
    # STIX identifiers are RFC 4122 UUIDs: another variant would be refused by every STIX parser.
    return f"indicator--{text}" if uuid.UUID(text).variant == uuid.RFC_4122 else None


def stix_moment(text: str) -> datetime:
    """An ISO 8601 timestamp (STIX's ``...Z`` or with an offset) as an aware datetime."""
    return datetime.fromisoformat(text)


def stix_time(moment: str | datetime) -> str:
    """``moment`` (ISO 8601 text or an aware datetime) as a STIX timestamp: UTC, milliseconds."""
    if isinstance(moment, str):
        moment = stix_moment(moment)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class ShareBuilder:
    """Turns the detections of one group (one indicator's window, one scan, one verdict) into shares."""

    def __init__(self, policy: SharingPolicy) -> None:
        self.policy = policy
        self.context = context(policy)
        self.identity_id = self.context.identity["id"]
        self._ns = uuid.uuid5(uuid.NAMESPACE_URL, f"shoal-share:{self.identity_id}")
        self.guard = ConstituencyGuard(policy.constituency_set())

    def _id(self, kind: str, what: str) -> str:
        return f"{kind}--{uuid.uuid5(self._ns, what)}"

    def _tlp(self, detections: Iterable[dict[str, Any]]) -> str:
        return strictest([tlp_level(d.get("tlp"), self.policy.default_tlp) for d in detections])

    def _common(self, tlp: str, created: str, modified: str) -> dict[str, Any]:
        return {"created_by_ref": self.identity_id, "created": created, "modified": max(created, modified),
                "object_marking_refs": [TLP2_IDS[tlp]]}  # fmt: skip

    def sighting(self, confirmed: list[dict[str, Any]]) -> Share | None:
        """The sighting of one indicator in one window, from its confirmed detections (all hosts)."""
        if not confirmed:
            return None
        first = confirmed[0]
        ref = shared_indicator_ref(first["indicator"]["id"] if first.get("indicator") else first["key"])
        if ref is None:
            return None
        window_start = first["window_start"]
        sid = self._id("sighting", f"sighting|{ref}|{window_start}")
        return self._sighting_share("sighting", sid, ref, confirmed, source_indicator=first["key"],
                                    value=(first.get("indicator") or {}).get("value"))  # fmt: skip

    def _sighting_share(
        self, kind: Any, sid: str, ref: str, detections: list[dict[str, Any]], source_indicator: str | None,
        value: str | None, extra_objects: tuple[dict[str, Any], ...] = (), scan: dict[str, Any] | None = None,
        primary: str | None = None, tlp: str | None = None, confidence: int | None = None,
    ) -> Share:  # fmt: skip
        tlp = tlp or self._tlp(detections)
        flows = sum(int(d["flows"]) for d in detections)
        first_seen = stix_time(min(d["first_seen"] for d in detections))
        last_seen = stix_time(max(d["last_seen"] for d in detections))
        modified = stix_time(max(d["updated"] for d in detections))
        window_start, window_end = detections[0]["window_start"], detections[0]["window_end"]
        hosts = max(int(d["internal_hosts"]) for d in detections)
        if confidence is None:
            confs = [d["confidence"] for d in detections if d.get("confidence") is not None]
            confidence = max(confs) if confs else None
        rules = sorted({d["rule"] for d in detections if d.get("rule")})
        summary = (f"{flows} flows, {sum(int(d['packets']) for d in detections)} packets, "
                   f"{sum(int(d['bytes']) for d in detections)} bytes; {hosts} internal host(s) involved; "
                   f"confirmed by {', '.join(rules) or 'analyst'}")  # fmt: skip
        kwargs = self._common(tlp, stix_time(window_start), modified)
        kwargs |= {"id": sid, "sighting_of_ref": ref, "count": min(flows, 999_999_999), "first_seen": first_seen,
                   "last_seen": last_seen, "where_sighted_refs": [self.identity_id], "description": summary}  # fmt: skip
        if confidence is not None:
            kwargs["confidence"] = int(confidence)
        sighting = _json(stix2.Sighting(**kwargs))
        objects = (*extra_objects, sighting)
        return Share(
            kind=kind, id=primary or sid, modified=modified, objects=objects, tlp=tlp, confidence=confidence,
            sources=tuple(sorted({s for d in detections for s in d.get("sources") or ()})),
            window_start=window_start, window_end=window_end, flows=flows, first_seen=first_seen,
            last_seen=last_seen, internal_hosts=hosts, source_indicator=source_indicator, indicator_value=value,
            scanner=scan["scanner"] if scan else None, protocol=scan["protocol"] if scan else None,
            port=scan["port"] if scan else None, detections=tuple(sorted(d["id"] for d in detections)),
        )  # fmt: skip

    def scan_confidence(self, detection: dict[str, Any]) -> int:
        """From the evidence: more distinct targets and a larger share of unanswered probes make a
        scanner surer (10 targets ~50, 100 ~70, 1000 ~90, scaled down by answered flows)."""
        targets = max(int(detection["scan"]["targets"]), 1)
        flows = max(int(detection["flows"]), 1)
        probe_share = min(int(detection["probe_flows"]) / flows, 1.0)
        return round(min(90.0, 30.0 + 20.0 * math.log10(targets)) * (0.5 + 0.5 * probe_share))

    def scan(self, detection: dict[str, Any]) -> Share:
        """A new indicator of the scanner, valid for a short time, and its sighting in this window."""
        scan = detection["scan"]
        scanner, port, protocol = scan["scanner"], int(scan["port"]), int(scan["protocol"])
        family = "ipv6-addr" if ":" in scanner else "ipv4-addr"
        iid = self._id("indicator", f"scan|{detection['key']}|{detection['window_start']}")
        conf = self.scan_confidence(detection)
        tlp = self._tlp([detection])
        valid_from = stix_time(detection["first_seen"])
        last = stix_moment(detection["last_seen"])
        valid_until = stix_time(last + timedelta(hours=self.policy.indicators.validity_hours))
        proto = PROTOCOL_NAMES.get(protocol, str(protocol))
        kill_chain = {"kill_chain_name": self.policy.indicators.kill_chain_name,
                      "phase_name": self.policy.indicators.phase_name}  # fmt: skip
        kwargs = self._common(tlp, stix_time(detection["window_start"]), stix_time(detection["updated"]))
        kwargs |= {
            "id": iid, "name": f"Scanner of {proto}/{port}",
            "description": (f"Probed {scan['targets']} distinct addresses of {self.policy.identity.name} on "
                            f"{proto}/{port} ({detection['flows']} flows, {detection['probe_flows']} unanswered)"),
            "pattern": f"[{family}:value = '{scanner}']", "pattern_type": "stix",
            "valid_from": valid_from, "valid_until": valid_until, "confidence": conf,
            "indicator_types": list(self.policy.indicators.indicator_types), "kill_chain_phases": [kill_chain],
        }  # fmt: skip
        indicator = _json(stix2.Indicator(**kwargs))
        sid = self._id("sighting", f"sighting|{iid}|{detection['window_start']}")
        return self._sighting_share("indicator", sid, iid, [detection], source_indicator=None, value=scanner,
                                    extra_objects=(indicator,), scan=scan, primary=iid, tlp=tlp,
                                    confidence=conf)  # fmt: skip

    def _redacted(self, text: str | None) -> str | None:
        """An analyst's free text with the constituency's addresses taken out (they may name their own
        host in it); the policy's guard would otherwise refuse the whole false positive."""
        if not text:
            return text
        for address in self.guard.constituents_in(text):
            text = re.sub(
                rf"(?<![0-9A-Fa-f:.]){re.escape(address)}(?![0-9A-Fa-f])", "[constituent address]", text
            )
        return text

    def false_positive(self, detection: dict[str, Any]) -> Share | None:
        """An analyst's false positive as an Opinion on the feed's indicator (to the feed's source)."""
        ref = shared_indicator_ref(detection["key"]) if detection["kind"] == "indicator" else None
        if ref is None:
            return None
        feedback = detection.get("feedback") or {}
        oid = self._id("opinion", f"false-positive|{ref}|{detection['window_start']}|{detection['id']}")
        modified = stix_time(feedback.get("at") or detection["updated"])
        tlp = self._tlp([detection])
        kwargs = self._common(tlp, stix_time(detection["window_start"]), modified)
        reason = self._redacted(feedback.get("reason"))
        kwargs |= {"id": oid, "opinion": "strongly-disagree", "object_refs": [ref],
                   "explanation": f"False positive at {self.policy.identity.name}" + (f": {reason}" if reason else "")}  # fmt: skip
        opinion = _json(stix2.Opinion(**kwargs))
        return Share(
            kind="false_positive", id=oid, modified=modified, objects=(opinion,), tlp=tlp,
            confidence=detection.get("confidence"), sources=tuple(detection.get("sources") or ()),
            window_start=detection["window_start"], window_end=detection["window_end"],
            flows=int(detection["flows"]), first_seen=stix_time(detection["first_seen"]),
            last_seen=stix_time(detection["last_seen"]), internal_hosts=1, source_indicator=detection["key"],
            indicator_value=(detection.get("indicator") or {}).get("value"), reason=reason,
            detections=(detection["id"],),
        )  # fmt: skip
