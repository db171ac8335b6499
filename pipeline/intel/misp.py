"""MISP events (JSON export), MISP feed directories (manifest.json + event files) and MISP servers
(PyMISP restSearch). Only ``to_ids`` attributes detect, unless told otherwise."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any

from pipeline.intel.load import IntelError, IntelLoad
from pipeline.intel.model import Condition, Indicator, parse_time

ADDRESS_TYPES = {"ip-src": "src", "ip-dst": "dst", "ip-src|port": "src", "ip-dst|port": "dst"}


def load_misp_event(path: Path, to_ids_only: bool = True) -> IntelLoad:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IntelError(f"{path}: not readable JSON ({exc})") from exc
    # A saved search answer ({"response": [events]}, as restSearch returns it), a list of events, or one.
    if isinstance(data, dict) and isinstance(data.get("response"), list):
        data = data["response"]
    return from_events(data if isinstance(data, list) else [data], str(path), to_ids_only)


def load_misp_feed(path: Path, to_ids_only: bool = True) -> IntelLoad:
    """A feed directory as MISP publishes it: every event the manifest lists (and nothing outside
    the directory: a manifest naming ``../x`` or an absolute path is refused by name)."""
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IntelError(f"{path}: no readable manifest.json ({exc})") from exc
    if not isinstance(manifest, dict):
        raise IntelError(
            f"{path}/manifest.json: a JSON {type(manifest).__name__}, not an object of event uuids"
        )
    load = IntelLoad(str(path))
    root = path.resolve()
    for uuid in manifest:
        file = (path / f"{uuid}.json").resolve()
        if not re.fullmatch(r"[0-9A-Za-z-]{1,64}", str(uuid)) or file.parent != root:
            load.errors.append(
                f"event {str(uuid)[:80]!r}: not an event uuid of this feed (outside {path}); skipped"
            )
            continue
        try:
            event = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            load.errors.append(f"event {uuid}: {exc}")
            continue
        load.merge(from_events([event], path.name, to_ids_only))
    if manifest and not load.count and not load.errors and not load.unsupported and not load.skipped:
        load.errors.append(f"{path}: {len(manifest)} events listed, none with an indicator")
    return load


def load_misp_server(url: str, key: str, to_ids_only: bool = True, **search: Any) -> IntelLoad:
    """Attributes from a MISP server through PyMISP's restSearch (events, so tags come along).
    TLS is verified, against SHOAL_MISP_CA (a CA bundle path) when set. Any failure to reach or read
    the server is an :class:`IntelError`, so a scheduled sync logs it and tries again later."""
    import requests
    from pymisp import PyMISP, PyMISPError

    ca = os.environ.get("SHOAL_MISP_CA")
    try:
        misp = PyMISP(url, key, ssl=ca or True, timeout=60)
        events = misp.search(controller="events", to_ids=to_ids_only or None, pythonify=False, **search)
    except (PyMISPError, requests.RequestException, ValueError) as exc:
        raise IntelError(f"{url}: {type(exc).__name__}: {exc}") from exc
    if isinstance(events, dict) and "errors" in events:
        raise IntelError(f"{url}: {events['errors']}")
    if not isinstance(events, list):
        raise IntelError(f"{url}: restSearch answered {type(events).__name__}, not a list of events")
    return from_events(events, url, to_ids_only)


def from_events(events: list[Any], source: str, to_ids_only: bool) -> IntelLoad:
    load = IntelLoad(source)
    for wrapper in events:
        event = wrapper.get("Event", wrapper) if isinstance(wrapper, dict) else None
        if not isinstance(event, dict):
            load.errors.append(f"{source}: an item is not a MISP event")
            continue
        orgc = event.get("Orgc")
        org = str((orgc.get("name") if isinstance(orgc, dict) else None) or source)
        event_tlp = _tlp(_items(event, "Tag", load, source))
        attributes = _items(event, "Attribute", load, source)
        for obj in _items(event, "Object", load, source):
            attributes += _items(obj, "Attribute", load, source) if isinstance(obj, dict) else []
        for attr in attributes:
            try:
                _attribute(attr, org, event_tlp, to_ids_only, load)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                load.errors.append(
                    f"attribute {attr.get('uuid', '?') if isinstance(attr, dict) else '?'}: {exc}"
                )
    return load


def _attribute(attr: dict, org: str, event_tlp: str | None, to_ids_only: bool, load: IntelLoad) -> None:
    kind, value = attr["type"], str(attr["value"])
    if to_ids_only and not _truthy(attr.get("to_ids", False)):
        load.skipped["not_to_ids"] += 1
        return
    if kind == "domain|ip":
        # The address half (as MISP's own IDS export uses it), in either direction: a domain says
        # nothing of which side its address is on. misp-stix's STIX for it says the same.
        condition = Condition(network=ipaddress.ip_network(value.rpartition("|")[2], strict=False))
    elif kind in ADDRESS_TYPES:
        side = ADDRESS_TYPES[kind]
        ports = None
        if kind.endswith("|port"):
            address, _, port = value.rpartition("|")
            if not 0 <= int(port) <= 65535:
                raise ValueError(f"port {port} is not a port (0-65535)")
            value_net, ports = ipaddress.ip_network(address, strict=False), frozenset({int(port)})
        else:
            value_net = ipaddress.ip_network(value, strict=False)
        port_key = "src_ports" if side == "src" else "dst_ports"
        condition = Condition(network=value_net, side=side, **({port_key: ports} if ports else {}))
    elif kind == "AS":
        condition = Condition(asn=int(value.upper().removeprefix("AS")))
    else:
        load.unsupported_item(f"misp type {kind}", f"{kind}: {value}")
        return
    load.objects.append(
        Indicator(
            id=attr["uuid"],
            value=f"{kind}: {value}",
            source=org,
            conditions=(condition,),
            name=attr.get("comment") or None,
            tlp=_tlp(attr.get("Tag", [])) or event_tlp,
            valid_from=parse_time(attr.get("first_seen")),
            valid_until=parse_time(attr.get("last_seen")),
            labels=(attr.get("category", ""),) if attr.get("category") else (),
        )
    )


def _items(container: dict, key: str, load: IntelLoad, source: str) -> list[Any]:
    """``container[key]`` as a list; anything else is reported (by name) and read as empty."""
    value = container.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        load.errors.append(
            f"{source}: event {container.get('uuid', '?')}: {key} is a {type(value).__name__}, not a list"
        )
        return []
    return list(value)


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true")


def _tlp(tags: Any) -> str | None:
    for tag in tags if isinstance(tags, list) else []:
        name = str(tag.get("name", "") if isinstance(tag, dict) else tag).lower()
        if name.startswith("tlp:"):
            return name.removeprefix("tlp:")
    return None
