"""A worker's intel follower builds its index from the indicators topic's chunks, applies later
changes (deltas, rewrites, deleted feeds) beside its main index by chunk and row, and folds them into
a new main index in the background: at every step its matcher answers exactly what the feeds hold
(checked against the naive ipaddress reference), and withdrawals take effect with the update.

The topic's messages are what ``shoal intel publish`` would send (:func:`plan` against the log so
far), fed to the follower without a broker; tests/kafka/test_kafka_topics_intel.py does it on one."""

from __future__ import annotations

import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).parent.parent / "detectors"))
from flowbatch import flow_batch
from test_matcher_reference import reference

from pipeline.intel import load_source
from pipeline.intel.chunks import SCHEMA_HEADER, SCHEMA_VALUE, manifest_key
from pipeline.intel.lists import parse_entry
from pipeline.intel.load import IntelLoad
from pipeline.intel.model import Condition, Indicator
from pipeline.intel.publish_plan import plan
from pipeline.intel.topic import TopicState
from pipeline.runtime.intel_follower import IntelFollower

HEADERS = [(SCHEMA_HEADER, SCHEMA_VALUE)]


class Message:
    def __init__(self, key: bytes, value: bytes | None) -> None:
        self._key, self._value = key, value

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list:
        return HEADERS

    def error(self) -> None:
        return None


class Topic:
    """A log of messages, as the broker would keep them, published to as shoal intel publish does."""

    def __init__(self) -> None:
        self.log: list[tuple[bytes, bytes | None]] = []

    def state(self) -> TopicState:
        state = TopicState()
        for key, value in self.log:
            state.apply(key, value, HEADERS)
        return state

    def publish(self, *loads: IntelLoad) -> list[tuple[bytes, bytes | None]]:
        messages, self.reports = plan(self.state(), loads)
        self.log += messages
        return messages


ADDRESSES = [f"198.51.100.{k}" for k in range(0, 250, 10)] + ["2001:db8::7", "203.0.113.9", "192.0.2.77"]
FLOWS = [{"src": "192.0.2.1", "dst": a, "sport": 5000, "dport": 443, "proto": 6} for a in ADDRESSES] + [
    {"src": a, "dst": "192.0.2.1", "sport": 80, "dport": 80, "proto": 6} for a in ADDRESSES
]


def listing(path: Path, lines: list[str]) -> IntelLoad:
    path.write_text("\n".join(lines) + "\n")
    return load_source(str(path))


def objects(texts: list[str]) -> IntelLoad:
    """A feed of objects that fit no row: two conditions each, or a protocol."""
    load = IntelLoad("partner-stix")
    for n, text in enumerate(texts):
        first = parse_entry(text)
        second = Condition(network=parse_entry("192.0.2.77").network, side="dst", protocols=frozenset({6}))
        load.objects.append(
            Indicator(id=f"indicator--{n}", value=text, source="Partner", conditions=(first, second))
        )
    return load


def check(follower: IntelFollower, feeds: dict[str, IntelLoad]) -> None:
    """The follower's matcher against the reference over what the feeds hold."""
    live = [i for load in feeds.values() for i in load.indicators]
    alerts = follower.handle.matcher.match(flow_batch(FLOWS))
    got = sorted(zip(alerts.column("src_addr").to_pylist(), alerts.column("dst_addr").to_pylist(),
                     alerts.column("indicator_id").to_pylist(), alerts.column("side").to_pylist(), strict=True))  # fmt: skip
    batch = flow_batch(FLOWS)
    expected = sorted((batch.column("src_addr")[row].as_py(), batch.column("dst_addr")[row].as_py(), ind, side)
                      for row, ind, side in reference(live, FLOWS, []))  # fmt: skip
    assert got == expected
    assert follower.index.count == len(live)
    counts: dict[str, int] = {}
    for indicator in live:
        counts[indicator.source] = counts.get(indicator.source, 0) + 1
    assert follower.index.source_counts() == counts


def feed(follower: IntelFollower, messages: list[tuple[bytes, bytes | None]]) -> None:
    for key, value in messages:
        follower._apply(Message(key, value))


def test_changes_apply_as_deltas_and_merge_in_the_background(tmp_path: Path) -> None:
    topic = Topic()
    path = tmp_path / "partner-list.txt"
    lines = ["198.51.100.0/28", "198.51.100.40", "198.51.100.50|443", "2001:db8::/64", "198.51.100.128/25"]
    lines += [f"10.{k >> 8}.{k & 255}.1" for k in range(3000)]  # large enough for deltas
    feeds = {"list": listing(path, lines), "stix": objects(["203.0.113.9", "198.51.100.60"])}
    follower = IntelFollower("127.0.0.1:1", "indicators", CollectorRegistry(), settle_seconds=0, merge_at=100)
    feed(follower, topic.publish(*feeds.values()))
    follower._first_index()
    check(follower, feeds)
    main = follower.index.main
    # withdraw one line, change one (its port), add two: one delta, the main index untouched
    lines[1], lines[2] = "198.51.100.90", "198.51.100.50|80"
    lines.append("198.51.100.200")
    feeds["list"] = listing(path, lines)
    feed(follower, topic.publish(feeds["list"]))
    assert topic.reports[0].mode == "delta"
    follower._apply_pending()
    assert follower.index.main is main and follower.changes == 5  # 3 added, 2 withdrawn
    assert follower._merging is None
    check(follower, feeds)
    # the object feed changes whole (a rewrite of a small feed): its old chunk's positions withdrawn
    feeds["stix"] = objects(["198.51.100.70"])
    feed(follower, topic.publish(feeds["stix"]))
    assert topic.reports[0].mode == "rewrite"
    follower._apply_pending()
    assert follower.index.main is main
    check(follower, feeds)
    # past merge_at: a background rebuild; changes meanwhile still apply, then are laid over it
    del lines[100:220]
    feeds["list"] = listing(path, lines)
    feed(follower, topic.publish(feeds["list"]))
    follower._apply_pending()
    assert follower._merging is not None
    lines.append("198.51.100.230")
    feeds["list"] = listing(path, lines)
    feed(follower, topic.publish(feeds["list"]))
    follower._apply_pending()
    check(follower, feeds)
    follower._merging.join(30)
    follower._take_merged()
    assert follower.index.main is not main and follower.changes == 1  # the change made meanwhile
    check(follower, feeds)
    # a deleted feed (its manifest's tombstone): gone at the next update
    del feeds["stix"]
    feed(follower, [(manifest_key("partner-stix"), None)])
    follower._apply_pending()
    check(follower, feeds)


def test_a_change_too_large_for_a_delta_waits_for_the_rebuild(tmp_path: Path) -> None:
    topic = Topic()
    feeds = {"small": listing(tmp_path / "small.txt", ["198.51.100.10", "198.51.100.20"])}
    follower = IntelFollower("127.0.0.1:1", "indicators", CollectorRegistry(), settle_seconds=0, merge_at=50)
    feed(follower, topic.publish(*feeds.values()))
    follower._first_index()
    before = follower.index
    feeds["large"] = listing(
        tmp_path / "large.txt", ["198.51.100.30"] + [f"10.1.{k >> 8}.{k & 255}" for k in range(500)]
    )
    feed(follower, topic.publish(feeds["large"]))
    follower._apply_pending()
    assert follower.index is before and follower._merging is not None  # the old index answers meanwhile
    follower._merging.join(30)
    follower._take_merged()
    assert follower.changes == 0
    check(follower, feeds)


def test_unreadable_chunks_and_old_layout_messages_are_counted(tmp_path: Path) -> None:
    topic = Topic()
    feeds = {"list": listing(tmp_path / "list.txt", ["198.51.100.10", "198.51.100.20"])}
    registry = CollectorRegistry()
    follower = IntelFollower("127.0.0.1:1", "indicators", registry, settle_seconds=0)
    feed(follower, topic.publish(*feeds.values()))
    follower._apply(Message(b"chunk:0123", b"not arrow"))
    follower._apply(Message(b"feed:x", b"{not json"))
    old = Message(b"list.txt:198.51.100.30", b'{"id":"list.txt:198.51.100.30"}')
    old.headers = lambda: [(SCHEMA_HEADER, b"indicator/1")]  # type: ignore[method-assign]
    follower._apply(old)
    follower._first_index()
    check(follower, feeds)
    value = registry.get_sample_value
    assert value("shoal_intel_bad_messages_total", {"reason": "unreadable"}) == 2
    assert value("shoal_intel_bad_messages_total", {"reason": "old_layout"}) == 1
    assert follower.state.old_layout == {"list.txt:198.51.100.30"}
