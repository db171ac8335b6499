"""STIX 2.1 bundles: indicators whose patterns a flow can answer, compiled to conditions.

Patterns are parsed by stix2's pattern visitor (built on stix2-patterns). Bundles are read as JSON,
not through ``stix2.parse``: that keeps TLP 2.0 markings (rejected by some stix2 versions, cti-python-
stix2 #569) and lets one bad object fail alone.
"""

from __future__ import annotations

import ipaddress
import json
import math
from datetime import datetime
from itertools import chain, product
from pathlib import Path
from typing import Any

from stix2 import patterns as sp
from stix2.pattern_visitor import create_pattern_object

from pipeline.intel.load import IntelError, IntelLoad
from pipeline.intel.model import Condition, Indicator, Side, parse_time

# TLP marking-definition ids fixed by the STIX 2.1 specification (TLP 1.0) and by the TLP 2.0 extension.
TLP_IDS = {
    "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9": "white",
    "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da": "green",
    "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82": "amber",
    "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed": "red",
    "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487": "clear",
    "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb": "green",
    "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421": "amber",
    "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003": "amber+strict",
    "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1": "red",
}
PROTOCOLS = {
    "icmp": 1,
    "tcp": 6,
    "udp": 17,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "ipv6-icmp": 58,
    "icmpv6": 58,
    "sctp": 132,
}


MAX_CONDITIONS = 4096
"""Flow conditions one pattern may expand to; beyond it the indicator is reported unsupported."""


class Unsupported(Exception):
    """The pattern (or one branch of it) cannot be evaluated on a flow; the message is the reason."""


def load_stix(path: Path, min_confidence: int = 0, now: datetime | None = None) -> IntelLoad:
    """A bundle file, or every ``*.json`` bundle in a directory."""
    files = sorted(path.glob("**/*.json")) if path.is_dir() else [path]
    load = IntelLoad(str(path))
    for file in files:
        try:
            bundle = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            if path.is_dir():
                load.errors.append(f"{file}: not readable JSON ({exc})")
                continue
            raise IntelError(f"{file}: not readable JSON ({exc})") from exc
        objects, found = stix_objects(bundle)
        if objects is None:
            load.errors.append(f"{file}: {found}")
            continue
        part = from_objects(objects, default_source=file.stem, min_confidence=min_confidence, now=now)
        if not part.count and not part.errors and not part.unsupported and not part.skipped:
            kinds = sorted({str(o.get("type")) for o in objects if isinstance(o, dict)})
            part.errors.append(
                f"{file}: {len(objects)} STIX objects ({', '.join(kinds[:6]) or 'none'}), no indicator"
            )
        load.merge(part)
    return load


def stix_objects(data: Any) -> tuple[list[Any] | None, str]:
    """The STIX objects of what a producer wrote: a bundle, a TAXII envelope, a loose list of objects,
    one object, or medallion's data file (its collections' objects); else None and what was found."""
    if isinstance(data, list):
        objects = [o for o in data if isinstance(o, dict) and "type" in o]
        return (objects, "") if objects else (None, f"a JSON list of {len(data)} items, none a STIX object")
    if not isinstance(data, dict):
        return None, f"JSON {type(data).__name__}, not STIX"
    if isinstance(data.get("objects"), list):
        return data["objects"], ""
    if isinstance(data.get("type"), str) and "id" in data:
        return [data], ""
    collections = [c for v in data.values() if isinstance(v, dict) for c in v.get("collections") or ()
                   if isinstance(c, dict) and isinstance(c.get("objects"), list)]  # fmt: skip
    if collections:
        return [o for c in collections for o in c["objects"]], ""
    keys = ", ".join(sorted(map(str, data))[:8])
    return None, f"a JSON object ({keys}), not a STIX bundle, TAXII envelope or list of STIX objects"


def from_objects(
    objects: list[Any], default_source: str, min_confidence: int = 0, now: datetime | None = None
) -> IntelLoad:
    """Indicators from STIX objects (a bundle's, or a TAXII collection's)."""
    load = IntelLoad(default_source)
    tlp = dict(TLP_IDS)
    names: dict[str, str] = {}
    for obj in objects:
        if not isinstance(obj, dict):
            continue
        if obj.get("type") == "marking-definition":
            definition = obj.get("definition")
            level = (definition.get("tlp") if isinstance(definition, dict) else None) or str(
                obj.get("name", "")
            ).lower().removeprefix("tlp:")
            if level:
                tlp[obj.get("id", "")] = str(level).lower()
        elif obj.get("type") == "identity" and "name" in obj:
            names[obj.get("id", "")] = obj["name"]
    # A report or grouping's marking covers the objects it contains that carry none of their own
    # (misp-stix puts a MISP event's TLP tag on the grouping it makes of the event).
    inherited: dict[str, list[str]] = {}
    for obj in objects:
        if isinstance(obj, dict) and obj.get("type") in ("report", "grouping"):
            marks = [m for m in obj.get("object_marking_refs") or () if isinstance(m, str)]
            for ref in obj.get("object_refs") or ():
                if isinstance(ref, str) and marks:
                    inherited.setdefault(ref, marks)
    for item in objects:
        if not isinstance(item, dict) or item.get("type") != "indicator":
            continue
        ident = item.get("id", "?")
        obj = item if item.get("object_marking_refs") or ident not in inherited else {
            **item, "object_marking_refs": inherited[ident]}  # fmt: skip
        try:
            indicator = _indicator(obj, tlp, names.get(obj.get("created_by_ref", ""), default_source))
        except Unsupported as exc:
            load.unsupported_item(str(exc), str(obj.get("pattern", "")))
            continue
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
            load.errors.append(f"{ident}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        if indicator.revoked:
            load.skipped["revoked"] += 1
        elif now is not None and indicator.valid_until is not None and indicator.valid_until <= now:
            load.skipped["expired"] += 1
        elif indicator.confidence is not None and indicator.confidence < min_confidence:
            load.skipped["below_confidence"] += 1
        else:
            load.objects.append(indicator)
    return load


def _indicator(obj: dict, tlp: dict[str, str], source: str) -> Indicator:
    if obj.get("pattern_type", "stix") != "stix":
        raise Unsupported(f"pattern_type {obj.get('pattern_type')}")
    pattern = obj["pattern"]
    if not isinstance(pattern, str):
        raise TypeError("pattern is not a string")
    conditions = compile_pattern(pattern)
    refs = obj.get("object_marking_refs") or []
    if not isinstance(refs, list):
        raise TypeError(f"object_marking_refs is a {type(refs).__name__}, not a list")
    levels = [tlp[m] for m in refs if isinstance(m, str) and m in tlp]
    confidence = obj.get("confidence")
    if confidence is not None and not isinstance(confidence, int):
        raise TypeError(f"confidence {confidence!r} is not an integer")
    return Indicator(
        id=obj["id"], value=pattern, source=source, conditions=tuple(conditions), name=obj.get("name"),
        confidence=confidence, tlp=levels[0] if levels else None,
        valid_from=parse_time(obj.get("valid_from")), valid_until=parse_time(obj.get("valid_until")),
        revoked=bool(obj.get("revoked", False)), labels=tuple(obj.get("labels", ())),
    )  # fmt: skip


def compile_pattern(pattern: str) -> list[Condition]:
    """A STIX pattern as flow conditions (an OR of ANDs). Raises :class:`Unsupported` with the reason
    when no part of it can be evaluated on a flow, ``ValueError`` when it does not parse."""
    try:
        tree = create_pattern_object(pattern, version="2.1")
    except Exception as exc:  # the parser raises its own error types
        raise ValueError(f"invalid pattern: {exc}") from exc
    observations = _observations(tree)
    size = sum(_dnf_size(obs.operand) for obs in observations)
    if size > MAX_CONDITIONS:
        # ANDs of ORs multiply: 18 two-way ORs under one AND are 262,144 conditions.
        raise Unsupported(f"pattern expands to more than {MAX_CONDITIONS} conditions")
    conditions: list[Condition] = []
    reasons: list[str] = []
    for obs in observations:
        for conjunction in _dnf(obs.operand):
            try:
                conditions.append(_condition(conjunction))
            except Unsupported as exc:
                reasons.append(str(exc))
    if not conditions:
        raise Unsupported(reasons[0] if reasons else "empty pattern")
    return conditions


def _observations(tree: Any) -> list[sp.ObservationExpression]:
    if isinstance(tree, sp.ObservationExpression):
        return [tree]
    if isinstance(tree, sp.OrObservationExpression):
        return [o for operand in tree.operands for o in _observations(operand)]
    if isinstance(tree, sp.ParentheticalExpression):
        return _observations(tree.expression)
    if isinstance(tree, sp.FollowedByObservationExpression):
        raise Unsupported("FOLLOWEDBY")
    if isinstance(tree, sp.AndObservationExpression):
        raise Unsupported("AND across observations")
    if isinstance(tree, sp.QualifiedObservationExpression):
        raise Unsupported(f"qualifier {type(tree.qualifier).__name__.removesuffix('Qualifier').upper()}")
    raise Unsupported(f"expression {type(tree).__name__}")


def _dnf_size(expr: Any) -> int:
    """How many conjunctions :func:`_dnf` would make, without making them."""
    if isinstance(expr, sp.OrBooleanExpression):
        return sum(_dnf_size(o) for o in expr.operands)
    if isinstance(expr, sp.AndBooleanExpression):
        return math.prod(_dnf_size(o) for o in expr.operands)
    if isinstance(expr, sp.ParentheticalExpression):
        return _dnf_size(expr.expression)
    return 1


def _dnf(expr: Any) -> list[list[Any]]:
    """Disjunctive normal form of the comparison expression inside one observation."""
    if isinstance(expr, sp.OrBooleanExpression):
        return [c for operand in expr.operands for c in _dnf(operand)]
    if isinstance(expr, sp.AndBooleanExpression):
        return [list(chain.from_iterable(combo)) for combo in product(*(_dnf(o) for o in expr.operands))]
    if isinstance(expr, sp.ParentheticalExpression):
        return _dnf(expr.expression)
    return [[expr]]


def _condition(comparisons: list[Any]) -> Condition:
    addresses: list[tuple[Side, Any]] = []
    src_ports: set[int] | None = None
    dst_ports: set[int] | None = None
    protocols: set[int] | None = None
    asn: int | None = None
    domain = False
    for c in comparisons:
        if c.negated:
            raise Unsupported("negated comparison")
        path = str(c.lhs)
        kind = type(c).__name__
        if kind not in (
            "EqualityComparisonExpression",
            "IsSubsetComparisonExpression",
            "InComparisonExpression",
        ):
            raise Unsupported(f"operator {c.operator}")
        values = [v.value for v in c.rhs.value] if kind == "InComparisonExpression" else [c.rhs.value]
        if path in (
            "ipv4-addr:value",
            "ipv6-addr:value",
            "network-traffic:src_ref.value",
            "network-traffic:dst_ref.value",
        ):
            if len(values) != 1:
                raise Unsupported("IN on addresses")
            side: Side = "src" if "src_ref" in path else "dst" if "dst_ref" in path else "any"
            addresses.append((side, ipaddress.ip_network(str(values[0]), strict=False)))
        elif path in ("network-traffic:src_ref.type", "network-traffic:dst_ref.type"):
            # misp-stix and OpenCTI name the address type beside the value: a constraint every
            # address value already meets; another type (a domain name) is no address to index.
            if {str(v) for v in values} - {"ipv4-addr", "ipv6-addr"}:
                raise Unsupported(f"property {path} {values[0]}")
        elif path == "domain-name:resolves_to_refs[*].value":
            if len(values) != 1:
                raise Unsupported("IN on addresses")
            addresses.append(("any", ipaddress.ip_network(str(values[0]), strict=False)))
        elif path == "domain-name:value":
            domain = True  # MISP's domain|ip: the address it resolved to is what flows show
        elif path in ("network-traffic:src_port", "network-traffic:dst_port"):
            ports = {int(v) for v in values}
            if not all(0 <= p <= 65535 for p in ports):
                raise ValueError(f"{path}: {sorted(ports)} are not all ports (0-65535)")
            if path.endswith("src_port"):
                src_ports = ports if src_ports is None else src_ports & ports
            else:
                dst_ports = ports if dst_ports is None else dst_ports & ports
        elif path.startswith("network-traffic:protocols["):
            numbers = {PROTOCOLS[str(v).lower()] for v in values if str(v).lower() in PROTOCOLS}
            if not numbers:
                raise Unsupported("protocol not carried by flows")
            protocols = numbers if protocols is None else protocols & numbers
        elif path == "autonomous-system:number":
            if len(values) != 1:
                raise Unsupported("IN on AS numbers")
            asn = int(values[0])
        else:
            raise Unsupported(
                f"object {path.split(':', maxsplit=1)[0]}"
                if not path.startswith("network-traffic")
                else f"property {path}"
            )
    if not addresses and asn is None:
        raise Unsupported("object domain-name" if domain else "no address or AS to index")
    if len(addresses) > 2 or (len(addresses) == 2 and {addresses[0][0], addresses[1][0]} != {"src", "dst"}):
        raise Unsupported("several addresses on one side")
    first = addresses[0] if addresses else ("any", None)
    other = addresses[1][1] if len(addresses) == 2 else None
    return Condition(
        network=first[1], side=first[0], asn=asn,
        src_ports=frozenset(src_ports) if src_ports is not None else None,
        dst_ports=frozenset(dst_ports) if dst_ports is not None else None,
        protocols=frozenset(protocols) if protocols is not None else None, other_network=other,
    )  # fmt: skip
