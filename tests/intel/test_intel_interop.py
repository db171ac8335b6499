"""Intel as real producers write it: MISP events converted to STIX 2.1 by misp-stix (the library MISP
itself exports with) load as the same indicators as the MISP JSON, attribute for attribute; saved
MISP search answers; blocklists in Spamhaus DROP's format; repeated entries collapsed and counted;
impossible ports refused by name."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from misp_stix_converter import MISPtoSTIX21Parser

from pipeline.intel import load_source
from pipeline.intel.model import Indicator

ATTRIBUTES = [  # every MISP attribute type Shoal reads
    ("ip-dst", "203.0.113.5"),
    ("ip-src", "198.51.100.7"),
    ("ip-dst|port", "203.0.113.9|8080"),
    ("ip-src|port", "198.51.100.9|22"),
    ("domain|ip", "evil.example|203.0.113.77"),
    ("ip-dst", "2001:db8::5"),
    ("ip-src", "198.51.100.128/25"),
    ("ip-dst|port", "2001:db8::9|443"),
]


def misp_event(attribute_tlp: str | None = None) -> dict:
    """An event tagged TLP:GREEN; ``attribute_tlp`` tags its first attribute too."""
    event = {"Event": {
        "uuid": str(uuid.uuid4()), "info": "interop", "date": "2026-12-01", "timestamp": "1764547200",
        "threat_level_id": "3", "analysis": "2", "distribution": "1", "published": False,
        "Orgc": {"name": "CIRCL", "uuid": str(uuid.uuid4())}, "Tag": [{"name": "tlp:green"}],
        "Attribute": [{"uuid": str(uuid.uuid4()), "type": t, "category": "Network activity", "value": v,
                       "to_ids": True, "timestamp": "1764547200"} for t, v in ATTRIBUTES],
    }}  # fmt: skip
    if attribute_tlp:
        event["Event"]["Attribute"][0]["Tag"] = [{"name": f"tlp:{attribute_tlp}"}]
    return event


def conditions(indicators: list[Indicator]) -> dict[str, tuple]:
    """Attribute uuid -> what a flow must show (network, side, ports)."""
    out = {}
    for i in indicators:
        [c] = i.conditions
        out[i.id.removeprefix("indicator--")] = (str(c.network), c.side, c.src_ports, c.dst_ports)
    return out


def test_misp_stix_export_loads_as_the_misp_json_does(tmp_path: Path) -> None:
    event = misp_event(attribute_tlp="amber")
    (tmp_path / "event.json").write_text(json.dumps(event))
    parser = MISPtoSTIX21Parser()
    parser.parse_misp_event(event)
    bundle = parser.bundle.serialize() if hasattr(parser, "bundle") else None
    if bundle is None:
        bundle = json.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}",
                             "objects": [json.loads(o.serialize()) for o in parser.stix_objects]})  # fmt: skip
    (tmp_path / "event.stix.json").write_text(bundle)
    from_misp = load_source(str(tmp_path / "event.json"))
    from_stix = load_source(str(tmp_path / "event.stix.json"))
    assert from_misp.errors == [] and from_stix.errors == []
    assert from_stix.unsupported == {} and from_misp.unsupported == {}
    assert len(from_misp.indicators) == len(ATTRIBUTES)
    assert conditions(from_stix.indicators) == conditions(from_misp.indicators)
    tlp = {i.id.removeprefix("indicator--"): i.tlp for i in from_misp.indicators}
    assert {i.id.removeprefix("indicator--"): i.tlp for i in from_stix.indicators} == tlp
    assert sorted(tlp.values()) == ["amber"] + ["green"] * (len(ATTRIBUTES) - 1)
    sides = {
        v: s for (n, s, *_), (_, v) in zip(conditions(from_misp.indicators).values(), ATTRIBUTES, strict=True)
    }
    assert sides["203.0.113.5"] == "dst" and sides["198.51.100.7"] == "src"
    assert sides["evil.example|203.0.113.77"] == "any"


def test_saved_misp_search_answer_loads(tmp_path: Path) -> None:
    answer = {"response": [misp_event(), misp_event()]}
    (tmp_path / "search.json").write_text(json.dumps(answer))
    load = load_source(str(tmp_path / "search.json"))
    # The same attributes twice from the same organisation: each indicator once, the rest counted.
    assert len(load.indicators) == len(ATTRIBUTES) and load.duplicates == len(ATTRIBUTES)
    assert load.errors == []


def test_spamhaus_drop_format_with_references_as_names(tmp_path: Path) -> None:
    # The format of Spamhaus DROP and DROPv6 (generated: the lists themselves may not be redistributed).
    (tmp_path / "drop.txt").write_text(
        "; Spamhaus DROP List 2026/12/05 - (c) 2026 The Spamhaus Project SLU\n"
        "; Last-Modified: Sat, 05 Dec 2026 12:00:00 GMT\n"
        "1.10.16.0/20 ; SBL256894\n"
        "2.56.192.0/22 ; SBL459831\n"
        "2001:db8:100::/40 ; SBL123456\n"
        "203.0.113.5 # a FireHOL-style comment\n"
        "\n"
    )
    load = load_source(str(tmp_path / "drop.txt"))
    assert load.errors == []
    assert {(i.value, i.name) for i in load.indicators} == {
        ("1.10.16.0/20", "SBL256894"), ("2.56.192.0/22", "SBL459831"), ("2001:db8:100::/40", "SBL123456"),
        ("203.0.113.5", "a FireHOL-style comment"),
    }  # fmt: skip


def test_repeated_entries_become_one_indicator_and_are_counted(tmp_path: Path) -> None:
    (tmp_path / "otx.txt").write_text("203.0.113.5\n203.0.113.5\n198.51.100.0/24\n203.0.113.5 # again\n")
    load = load_source(str(tmp_path / "otx.txt"))
    assert sorted(i.value for i in load.indicators) == ["198.51.100.0/24", "203.0.113.5"]
    assert load.duplicates == 2


@pytest.mark.parametrize("entry", ["203.0.113.5|99999", "203.0.113.5|-1"])
def test_impossible_ports_are_refused_by_name(tmp_path: Path, entry: str) -> None:
    (tmp_path / "ports.txt").write_text(f"198.51.100.1|443\n{entry}\n")
    load = load_source(str(tmp_path / "ports.txt"))
    assert [i.value for i in load.indicators] == ["198.51.100.1|443"]
    assert len(load.errors) == 1 and "ports.txt:2" in load.errors[0]


def test_json_that_is_not_a_bundle_loads_or_says_what_it_is(tmp_path: Path) -> None:
    indicator = {"type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.uuid4()}",
                 "created": "2026-01-01T00:00:00Z", "modified": "2026-01-01T00:00:00Z", "pattern_type": "stix",
                 "pattern": "[ipv4-addr:value = '203.0.113.8']", "valid_from": "2026-01-01T00:00:00Z"}  # fmt: skip
    shapes = {
        "loose.json": [indicator],
        "envelope.json": {"more": False, "objects": [indicator]},
        "one.json": indicator,
        "medallion.json": {
            "/discovery": {"title": "t"},
            "api1": {"collections": [{"id": "c", "objects": [indicator]}]},
        },
    }
    for name, data in shapes.items():
        (tmp_path / name).write_text(json.dumps(data))
        load = load_source(str(tmp_path / name))
        assert [i.value for i in load.indicators] == [indicator["pattern"]], name
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1, "world": [2]}))
    load = load_source(str(tmp_path / "other.json"))
    assert load.indicators == [] and "not a STIX bundle" in load.errors[0] and "hello" in load.errors[0]
    (tmp_path / "idents.json").write_text(
        json.dumps([{"type": "identity", "id": "identity--x", "name": "n"}])
    )
    load = load_source(str(tmp_path / "idents.json"))
    assert load.indicators == [] and "1 STIX objects (identity), no indicator" in load.errors[0]
