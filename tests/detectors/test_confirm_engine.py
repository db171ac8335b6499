"""The confirmation engine and its configuration: when detections go out, windows close, late and
redelivered partials, analysts' verdicts, rules, and the errors a bad configuration file gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from detectors.detections import DetectionConfig, Rule, detection_id
from pipeline.config import ConfigError
from pipeline.confirm.engine import Confirmer, now_ms
from pipeline.confirm.settings import load_detection_settings

W = 300
START = 1_790_000_000_000 - 1_790_000_000_000 % (W * 1000)


def partial(host: str = "192.0.2.10", flows: int = 1, key: str = "indicator--a", confidence: int | None = 50,
            established: int = 0, bytes_: int = 100, source: str = "partner", tlp: str | None = "green") -> dict:  # fmt: skip
    return {
        "kind": "indicator", "key": key, "window_start": START, "window_seconds": W,
        "hosts": [{"host": host, "flows": flows, "packets": flows, "bytes": bytes_, "first_seen": START + 5,
                   "last_seen": START + 9, "established_flows": established, "probe_flows": flows - established,
                   "sides": ["dst"]}],
        "exporters": ["198.51.100.1"],
        "indicator": {"id": key, "value": "203.0.113.5", "name": "c2", "source": source, "confidence": confidence,
                      "tlp": tlp, "valid_until": None},
        "scan": None,
    }  # fmt: skip


def config(**kw: object) -> DetectionConfig:
    base = {"network": "example-nren", "window_seconds": W, "emit_seconds": 10.0, "close_after_seconds": 60.0,
            "rules": (Rule(name="three-flows", min_flows=3),)}  # fmt: skip
    return DetectionConfig(**(base | kw)).validate()  # type: ignore[arg-type]


def test_new_detection_at_once_counts_at_the_emit_step_final_at_close() -> None:
    c = Confirmer(config())
    t = START + 1000
    first = c.add(partial(), now=t)
    assert [(d["state"], d["flows"], d["final"]) for d in first] == [("observed", 1, False)]
    assert c.add(partial(), now=t + 1000) == []  # counts moved, but within the emit step
    assert c.tick(now=t + 2000) == []
    (moved,) = c.tick(now=t + 10_000)  # the step passed: the new count goes out
    assert (moved["state"], moved["flows"]) == ("observed", 2)
    (confirmed,) = c.add(partial(), now=t + 11_000)  # the third flow confirms: a state change, at once
    assert (confirmed["state"], confirmed["rule"], confirmed["flows"]) == ("confirmed", "three-flows", 3)
    assert c.tick(now=START + W * 1000 + 59_000) == []  # not yet closed: late flows may still come
    (final,) = c.tick(now=START + W * 1000 + 60_000)
    assert final["final"] and final["flows"] == 3 and final["id"] == first[0]["id"]
    assert c.add(partial(), now=START + W * 1000 + 61_000) == [] and c.late == 1  # the final version stands
    c.tick(now=START + 2 * W * 1000 + 61_000)  # one window length later the marker goes too
    assert c.groups == {}


def test_redelivered_partials_are_skipped_by_offset() -> None:
    c = Confirmer(config())
    c.add(partial(), offset=7, now=START)
    c.add(partial(), offset=7, now=START)  # redelivered after a crash
    c.add(partial(), offset=5, now=START)  # older still
    c.add(partial(), offset=8, now=START)
    (final,) = c.close_all(now=START)
    assert final["flows"] == 2 and c.duplicates == 2


def test_ids_are_deterministic_and_name_network_kind_key_host_window() -> None:
    (d,) = Confirmer(config()).add(partial(), now=START)
    assert d["id"] == detection_id("example-nren", "indicator", "indicator--a", "192.0.2.10", START)
    (again,) = Confirmer(config()).add(partial(), now=START + 5000)
    assert again["id"] == d["id"]
    (other_net,) = Confirmer(config(network="other")).add(partial(), now=START)
    assert other_net["id"] != d["id"]


@pytest.mark.parametrize(
    ("rule", "inputs", "confirmed"),
    [
        (Rule(name="r", min_confidence=75, min_flows=2), [partial(confidence=80, flows=2)], True),
        (Rule(name="r", min_confidence=75, min_flows=2), [partial(confidence=70, flows=5)], False),
        (Rule(name="r", min_confidence=75), [partial(confidence=None)], False),
        (
            Rule(name="r", min_hosts=3),
            [partial(host=h) for h in ("192.0.2.1", "192.0.2.2", "192.0.2.3")],
            True,
        ),
        (Rule(name="r", min_hosts=3), [partial(host=h) for h in ("192.0.2.1", "192.0.2.2")], False),
        (Rule(name="r", beyond_syn=True), [partial(flows=4, established=0)], False),
        (Rule(name="r", beyond_syn=True), [partial(flows=4, established=1)], True),
        (Rule(name="r", beyond_syn=True, min_bytes_per_flow=500), [partial(flows=2, bytes_=1000)], True),
        (Rule(name="r", beyond_syn=True, min_bytes_per_flow=500), [partial(flows=2, bytes_=999)], False),
        (Rule(name="r", feeds=("CIRCL",)), [partial(source="CIRCL")], True),
        (Rule(name="r", feeds=("CIRCL",)), [partial(source="partner")], False),
        (Rule(name="r", kind="scan"), [partial()], False),
    ],
)
def test_rules(rule: Rule, inputs: list[dict], confirmed: bool) -> None:
    c = Confirmer(config(rules=(rule,)))
    for p in inputs:
        c.add(p, now=START)
    states = {d["state"] for d in c.close_all(now=START)}
    assert states == ({"confirmed"} if confirmed else {"observed"})


def test_strictest_tlp_and_highest_confidence_of_the_inputs() -> None:
    c = Confirmer(config())
    c.add(partial(confidence=40, tlp="green", source="a"), now=START)
    c.add(partial(confidence=90, tlp="amber", source="b"), now=START)
    c.add(partial(confidence=60, tlp="clear", source="a"), now=START)
    (d,) = c.close_all(now=START)
    assert (d["tlp"], d["confidence"], d["sources"]) == ("amber", 90, ["a", "b"])


def test_verdicts_false_positive_silences_the_key_confirm_confirms() -> None:
    c = Confirmer(config(rules=(Rule(name="any", min_flows=1),)))
    (d,) = c.add(partial(), now=now_ms())
    assert d["state"] == "confirmed"
    at = now_ms()
    verdict = {"kind": "indicator", "key": "indicator--a", "internal_host": "192.0.2.10", "window_start": START,
               "verdict": "false_positive", "reason": "our own scanner", "analyst": "soc1", "at": "x", "at_ms": at}  # fmt: skip
    c.feedback(verdict)
    (fp,) = c.tick(now=now_ms())  # a state change: out at the next tick
    assert (fp["state"], fp["rule"], fp["feedback"]["reason"]) == (
        "false_positive",
        "analyst",
        "our own scanner",
    )
    (other,) = c.add(partial(host="192.0.2.11"), now=now_ms())  # another host: not silenced
    assert other["state"] == "confirmed"
    c.feedback(verdict | {"internal_host": "192.0.2.11", "verdict": "confirm"})
    c.close_all()
    c2 = Confirmer(config(rules=()), verdicts=c.verdicts)  # a later window of the silenced key
    (later,) = c2.add(partial() | {"window_start": START + W * 1000}, now=now_ms())
    assert later["state"] == "false_positive"
    (confirmed,) = c2.add(partial(host="192.0.2.11"), now=now_ms())
    assert (confirmed["state"], confirmed["rule"]) == ("confirmed", "analyst")


def test_hosts_beyond_the_cap_are_summed_not_lost() -> None:
    c = Confirmer(config(max_hosts=2))
    for i in range(5):
        c.add(partial(host=f"192.0.2.{i}"), now=START)
    out = c.close_all(now=START)
    assert sorted(d["internal_host"] or "-" for d in out) == ["-", "192.0.2.0", "192.0.2.1"]
    assert sum(d["flows"] for d in out) == 5


def test_configuration_file_and_its_errors(tmp_path: Path) -> None:
    good = tmp_path / "d.toml"
    good.write_text('[detections]\nnetwork = "jisc"\nwindow_seconds = 60\n[[detections.rules]]\nname = "x"\n'
                    'min_hosts = 2\n[constituency]\ncidrs = ["192.0.2.0/24"]\nasns = ["AS64500"]\n'
                    '[scan]\ntlp = "amber"\n')  # fmt: skip
    s = load_detection_settings(good, environ={"SHOAL_DETECTIONS__DETECTIONS__EMIT_SECONDS": "3"})
    assert s.detections.network == "jisc" and s.detections.emit_seconds == 3.0
    assert s.detections.rules == (Rule(name="x", min_hosts=2),) and s.scan.tlp == "amber"
    for text, message in [
        ("[detections]\nwindow_seconds = 0\n", "window_seconds"),
        ("[detections]\nwindwo_seconds = 60\n", "unknown setting detections.'windwo_seconds'"),
        ("[[detections.rules]]\nmin_flows = 2\n", "needs a name"),
        ('[[detections.rules]]\nname = "a"\nkind = "scans"\n', "expected indicator, scan or any"),
        ('[[detections.rules]]\nname = "a"\n[[detections.rules]]\nname = "a"\n', "unique"),
        ('[detections]\nrules = "all"\n', "expected an array of tables"),
        ('[constituency]\ncidrs = ["192.0.2.0/33"]\n', "not a CIDR or AS number"),
        ('[constituency]\nfiles = ["/nonexistent/campus.txt"]\n', "cannot read"),
        ('[scan]\ntlp = "purple"\n', "scan.tlp"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_detection_settings(bad, environ={})


def test_partials_packed_per_partition_by_a_stable_hash() -> None:
    import json
    import zlib

    from pipeline.transport.detections import MAX_PARTIALS_PER_MESSAGE, pack_partials

    many = [partial(key=f"indicator--{i % 40}", host=f"192.0.2.{i % 200}") for i in range(1200)]
    messages = list(pack_partials(many, partitions=6))
    unpacked = [(partition, p) for partition, _, value in messages for p in json.loads(value)]
    assert sorted(json.dumps(p, sort_keys=True) for _, p in unpacked) == sorted(
        json.dumps(p, sort_keys=True) for p in many
    )
    for partition, p in unpacked:  # one indicator's partials always meet in one partition
        assert partition == zlib.crc32(p["key"].encode()) % 6
    assert all(len(json.loads(v)) <= MAX_PARTIALS_PER_MESSAGE for _, _, v in messages)
    assert len(messages) < 20
