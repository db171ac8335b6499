"""A MISP instance, through PyMISP: sightings back on the feed's attributes (type 0 confirmed, type 1
false positive), and scanners found here as events of ``ip-src`` attributes.

- Sightings: one MISP sighting per shared sighting (indicator and window), dated at the window's
  start, with this network's name as ``source``; on the attribute by uuid when the intel came from
  MISP (or from MISP's STIX export, whose indicator ids are the attribute uuids), else by value,
  values batched per window in one request. MISP sightings carry no count, so a later version of a
  sighting sends nothing more; and since MISP's REST sightings are not idempotent, the attribute's
  sightings are looked up first: one from this source at that date means it was delivered.
- New indicators: one event per window (deterministic uuid over this network and the window), one
  ``ip-src`` attribute per scanner (deterministic uuid over the STIX indicator id, ``to_ids``,
  ``first_seen``/``last_seen`` = its validity), the policy's distribution or sharing group and
  ``tlp:`` tags. An event that exists is edited (MISP merges attributes by uuid): a re-send or an
  update never duplicates. Events are left unpublished: publishing (and so pushing to partners)
  stays the operator's decision, or MISP's own rules'.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from pymisp import MISPEvent, MISPOrganisation, PyMISP
from pymisp.exceptions import PyMISPError

from pipeline.share.build import stix_moment
from pipeline.share.destinations.base import DeliveryError, Share, ShareContext
from pipeline.share.guard import addresses_in
from pipeline.share.policy import DestinationConfig

log = logging.getLogger("shoal.share")
SIGHTING_TYPE = {"sighting": "0", "false_positive": "1"}
UUID_TEXT = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _epoch(text: str) -> int:
    return int(stix_moment(text).timestamp())


def attribute_uuid(share: Share) -> str | None:
    """The MISP attribute a sighting is of, when the feed's indicator id names one."""
    ref = (share.source_indicator or "").lower().removeprefix("indicator--")
    try:
        return str(uuid.UUID(ref)) if len(ref) == 36 else None
    except ValueError:
        return None


def sighting_values(share: Share) -> list[str]:
    """The addresses an indicator names (its pattern or MISP value), for a sighting by value."""
    return sorted(set(addresses_in(share.indicator_value or "")))


class ScannerEvents:
    """Scanners found here as MISP events, one per window: the same event and attribute uuids for
    the same window and indicator wherever they are built (a MISP instance, a MISP feed)."""

    def __init__(self, config: DestinationConfig, context: ShareContext) -> None:
        self.config = config
        self.source = str(context.identity.get("name") or "")
        self.namespace = uuid.UUID(context.identity["id"].removeprefix("identity--"))

    def event_uuid(self, share: Share) -> str:
        return str(uuid.uuid5(self.namespace, f"misp-event|scanners|{share.window_start}"))

    def event(self, window_shares: Sequence[Share]) -> MISPEvent:
        first = window_shares[0]
        event = MISPEvent()
        event.uuid = self.event_uuid(first)
        event.info = f"Scanners seen by {self.source} ({first.window_start} - {first.window_end})"
        event.distribution = self.config.distribution
        if self.config.distribution == 4:
            event.sharing_group_id = self.config.sharing_group
        event.threat_level_id = 3
        event.analysis = 2
        event.set_date(first.window_start[:10])
        event.Orgc = MISPOrganisation()
        event.Orgc.name = self.source
        event.Orgc.uuid = str(self.namespace)
        for level in sorted({s.tlp for s in window_shares}):
            event.add_tag(f"tlp:{level}")
        for share in window_shares:
            self.add(event, share)
        return event

    def add(self, event: MISPEvent, share: Share) -> None:
        """The scanner of ``share`` as an attribute of ``event`` (replacing its earlier version)."""
        indicator = share.objects[0]
        attr_uuid = str(uuid.uuid5(self.namespace, indicator["id"]))
        event.attributes = [a for a in event.attributes if a.uuid != attr_uuid]
        proto = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}.get(share.protocol or 0, str(share.protocol))
        attr = event.add_attribute(
            "ip-src", share.scanner, to_ids=True, category="Network activity", uuid=attr_uuid,
            comment=f"scanned {share.internal_hosts} addresses on {proto}/{share.port} "
                    f"({share.flows} flows); confidence {share.confidence}",
            first_seen=indicator["valid_from"], last_seen=indicator["valid_until"],
            distribution=5,  # inherit the event's
        )  # fmt: skip
        attr.add_tag(f"tlp:{share.tlp}")
        # Timestamps from the share's version, not the clock (PyMISP's default): the same share
        # always makes the same event, and MISP sees an update (a newer timestamp) only when there is one.
        attr.timestamp = stix_moment(share.modified)
        event.timestamp = event.publish_timestamp = max(a.timestamp for a in event.attributes)


class MispDestination:
    def __init__(self, config: DestinationConfig, context: ShareContext) -> None:
        self.name = config.name
        self.config = config
        self.context = context
        self.source = str(context.identity.get("name") or "")
        self.events = ScannerEvents(config, context)
        if os.environ.get(config.secret_env) is None:
            raise ValueError(f"environment variable {config.secret_env} (the MISP API key) not set")
        self._misp: PyMISP | None = None

    # What goes out, per share: exactly the bodies send() posts for it.
    def sighting_body(self, share: Share, by_value: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"type": SIGHTING_TYPE[share.kind], "source": self.source,
                                "timestamp": str(_epoch(share.window_start))}  # fmt: skip
        if not by_value and (attr := attribute_uuid(share)) is not None:
            body["uuid"] = attr
        else:
            body["values"] = sighting_values(share)
        return body

    def payload(self, share: Share) -> str:
        if share.kind == "indicator":
            return self.events.event([share]).to_json()
        # Either may be sent (by uuid, or by value where MISP lacks the attribute): the guard sees both.
        return json.dumps(
            [self.sighting_body(share), self.sighting_body(share, by_value=True)], sort_keys=True
        )

    # Delivery.
    def _client(self) -> PyMISP:
        if self._misp is None:
            verify: bool | str = self.config.ca_file or self.config.verify_tls
            self._misp = PyMISP(self.config.url, os.environ[self.config.secret_env], ssl=verify,
                                timeout=self.config.timeout_seconds, tool="shoal")  # fmt: skip
        return self._misp

    @staticmethod
    def _ok(answer: Any, what: str) -> Any:
        if isinstance(answer, dict) and answer.get("errors"):
            raise DeliveryError(f"{what}: {str(answer['errors'])[:300]}")
        return answer

    def send(self, shares: Sequence[Share]) -> None:
        failed: set[str] = set()
        first_error = ""
        scans: dict[str, list[Share]] = defaultdict(list)
        sightings: list[Share] = []
        for share in shares:
            (scans[share.window_start] if share.kind == "indicator" else sightings).append(share)
        try:
            misp = self._client()
        except (PyMISPError, OSError) as exc:
            raise DeliveryError(f"{self.name}: cannot reach MISP: {str(exc)[:300]}") from None
        for window_shares in scans.values():
            try:
                self._send_event(misp, window_shares)
            except (DeliveryError, PyMISPError, OSError, ValueError) as exc:
                failed |= {s.id for s in window_shares}
                first_error = first_error or str(exc)
        for share, error in self._send_sightings(misp, sightings).items():
            failed.add(share)
            first_error = first_error or error
        if failed:
            raise DeliveryError(f"{self.name}: {first_error[:300]}", failed)

    def _send_event(self, misp: PyMISP, window_shares: list[Share]) -> None:
        event = self.events.event(window_shares)
        if misp.event_exists(event.uuid):
            self._ok(misp.update_event(event, event_id=event.uuid), f"edit event {event.uuid}")
        else:
            self._ok(misp.add_event(event), f"add event {event.uuid}")

    def _attributes(self, misp: PyMISP, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The attributes a sighting body names, with their sightings."""
        # Built here rather than by PyMISP's search(), whose 0/1 flags and value lists MISP accepts but
        # its published API description does not: one query per value, booleans as booleans.
        queries = [{"uuid": body["uuid"]}] if "uuid" in body else [{"value": v} for v in body["values"]]
        out: list[dict[str, Any]] = []
        for query in queries:
            found = self._ok(misp.direct_call("attributes/restSearch", {**query, "includeSightings": True,
                                                                        "returnFormat": "json"}), "search")  # fmt: skip
            out += found.get("Attribute", []) if isinstance(found, dict) else []
        return out

    def _sighted(self, attributes: list[dict[str, Any]], body: dict[str, Any]) -> set[str]:
        """Which targets (uuids, or values) carry this source's sighting of that type and date already:
        those were delivered before."""
        return {
            a.get("uuid") if "uuid" in body else a.get("value")
            for a in attributes
            if any(s.get("source") == self.source and str(s.get("type")) == body["type"]
                   and str(s.get("date_sighting")) == body["timestamp"] for s in a.get("Sighting") or ())
        }  # fmt: skip

    def _send_sightings(self, misp: PyMISP, sightings: list[Share]) -> dict[str, str]:
        """Sightings by uuid one request each; by value batched per (window, type). Returns failures."""
        failures: dict[str, str] = {}
        by_value: dict[tuple[str, str], list[Share]] = defaultdict(list)
        for share in sightings:
            body = self.sighting_body(share)
            try:
                if "uuid" in body:
                    attributes = self._attributes(misp, body)
                    if attributes:  # MISP holds the feed's attribute: the sighting goes on it
                        if body["uuid"] not in self._sighted(attributes, body):
                            self._ok(misp.add_sighting(body), f"add sighting {body['uuid']}")
                        continue
                    body = self.sighting_body(share, by_value=True)
            except (DeliveryError, PyMISPError, OSError, ValueError) as exc:
                failures[share.id] = str(exc)
                continue
            if body["values"]:
                by_value[(share.window_start, body["type"])].append(share)
            else:
                log.info(
                    "%s: %s %s names no address MISP could match; nothing to send",
                    self.name,
                    share.kind,
                    share.id,
                )
        for group in by_value.values():
            body = self.sighting_body(group[0], by_value=True)
            body["values"] = sorted({v for s in group for v in sighting_values(s)})
            try:
                done = self._sighted(self._attributes(misp, body), body)
                body["values"] = [v for v in body["values"] if v not in done]
                if body["values"]:
                    self._ok(misp.add_sighting(body), f"add sightings of {body['values'][:3]}")
            except (DeliveryError, PyMISPError, OSError, ValueError) as exc:
                failures.update((s.id, str(exc)) for s in group)
        return failures

    def close(self) -> None:
        self._misp = None
