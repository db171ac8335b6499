"""Feed items of uneven quality (issue 15, items 10, 11, 13, 14): one malformed item is reported by
name and skipped, the rest of the source loads; a MISP feed manifest cannot reach outside its
directory; catch-all networks are refused loudly; a pattern that would expand past the cap is
reported unsupported instead of eating memory. Each case failed on the code before the fix."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from pipeline.intel import load_source
from pipeline.intel.load import IntelError

GOOD = "[ipv4-addr:value = '203.0.113.8']"


def indicator(pattern: str = GOOD, **extra: object) -> dict:
    return {"type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.uuid4()}",
            "created": "2026-01-01T00:00:00Z", "modified": "2026-01-01T00:00:00Z", "pattern_type": "stix",
            "pattern": pattern, "valid_from": "2026-01-01T00:00:00Z", **extra}  # fmt: skip


def bundle(tmp_path: Path, *objects: dict) -> str:
    path = tmp_path / f"b-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": list(objects)}))
    return str(path)


@pytest.mark.parametrize(
    "bad",
    [
        {"valid_until": 1e300},
        {"valid_until": "100000000000000000000-01-01T00:00:00Z"},
        {"valid_from": float("nan")} if False else {"valid_from": "2026-13-45T99:00:00Z"},
        {"object_marking_refs": "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da"},
    ],
    ids=["valid-until-1e300", "year-10^20", "bad-date", "markings-a-string"],
)
def test_one_bad_stix_item_is_named_and_the_rest_loads(tmp_path: Path, bad: dict) -> None:
    broken = indicator("[ipv4-addr:value = '198.51.100.9']", **bad)
    load = load_source(bundle(tmp_path, indicator(), broken))
    assert [i.value for i in load.indicators] == [GOOD]
    assert len(load.errors) == 1 and broken["id"] in load.errors[0]


def test_a_marking_definition_given_as_a_string(tmp_path: Path) -> None:
    marking = {"type": "marking-definition", "id": "marking-definition--x", "definition": "tlp:amber"}
    load = load_source(bundle(tmp_path, marking, indicator()))
    assert [i.value for i in load.indicators] == [GOOD]


def misp_event(**overrides: object) -> dict:
    event = {"uuid": str(uuid.uuid4()), "info": "e", "Orgc": {"name": "Partner"}, "Tag": [{"name": "tlp:green"}],
             "Attribute": [{"uuid": str(uuid.uuid4()), "type": "ip-dst", "value": "203.0.113.8", "to_ids": True},
                           {"uuid": str(uuid.uuid4()), "type": "ip-dst", "value": "203.0.113.9", "to_ids": True,
                            "last_seen": "99999999999999999999"}]}  # fmt: skip
    event.update(overrides)
    return {"Event": event}


@pytest.mark.parametrize(
    "overrides",
    [{}, {"Object": "x"}, {"Orgc": "Partner"}, {"Tag": {"name": "tlp:red"}}],
    ids=["last-seen-out-of-range", "object-a-string", "orgc-a-string", "tag-not-a-list"],
)
def test_one_bad_misp_item_is_named_and_the_rest_loads(tmp_path: Path, overrides: dict) -> None:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(misp_event(**overrides)))
    load = load_source(str(path))
    assert [i.value for i in load.indicators] == ["ip-dst: 203.0.113.8"]
    assert load.errors and all("Traceback" not in e for e in load.errors)


def test_non_utf8_files_are_named_errors(tmp_path: Path) -> None:
    for name, data in {"latin1.json": '{"é": 1}'.encode("latin-1"), "utf16.txt": "203.0.113.8\n".encode("utf-16"),
                       "binary.txt": bytes(range(256))}.items():  # fmt: skip
        (tmp_path / name).write_bytes(data)
        with pytest.raises(IntelError, match=name):
            load_source(str(tmp_path / name))


def test_feed_manifest_stays_inside_the_feed(tmp_path: Path) -> None:
    feed, outside = tmp_path / "feed", tmp_path / "elsewhere"
    feed.mkdir()
    outside.mkdir()
    inside = str(uuid.uuid4())
    (feed / f"{inside}.json").write_text(json.dumps(misp_event()))
    (outside / "secret.json").write_text(json.dumps(misp_event(Attribute=[
        {"uuid": str(uuid.uuid4()), "type": "ip-dst", "value": "192.0.2.66", "to_ids": True}])))  # fmt: skip
    (feed / "manifest.json").write_text(json.dumps({inside: {}, "../elsewhere/secret": {},
                                                    str(outside / "secret"): {}}))  # fmt: skip
    load = load_source(str(feed))
    assert "192.0.2.66" not in json.dumps([i.value for i in load.indicators])
    assert sum("outside" in e for e in load.errors) == 2
    (feed / "manifest.json").write_text("[1, 2]")
    with pytest.raises(IntelError, match="not an object"):
        load_source(str(feed))


@pytest.mark.parametrize("entry", ["0.0.0.0/0", "::/0", "16.0.0.0/4"])
def test_catch_all_networks_are_refused_loudly(
    tmp_path: Path, entry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "list.txt").write_text(f"203.0.113.8\n{entry}\n")
    load = load_source(str(tmp_path / "list.txt"))
    assert [i.value for i in load.indicators] == ["203.0.113.8"]
    assert load.skipped["too_broad"] == 1 and entry in load.errors[0]
    monkeypatch.setenv("SHOAL_INTEL_MIN_PREFIX_V4", "0")
    monkeypatch.setenv("SHOAL_INTEL_MIN_PREFIX_V6", "0")
    assert len(load_source(str(tmp_path / "list.txt")).indicators) == 2  # configurable


def test_pattern_expansion_is_capped(tmp_path: Path) -> None:
    ors = " AND ".join(
        f"(ipv4-addr:value = '203.0.{i}.1' OR ipv4-addr:value = '203.0.{i}.2')" for i in range(18)
    )
    load = load_source(bundle(tmp_path, indicator(f"[{ors}]"), indicator()))
    assert [i.value for i in load.indicators] == [GOOD]
    assert list(load.unsupported) == ["pattern expands to more than 4096 conditions"]
