"""A worker's intel follower applies topic changes as deltas beside its main index, and folds them
into a new main index in the background: at every step its matcher answers exactly what the topic
holds (checked against the naive ipaddress reference), and removals take effect with the update."""

from __future__ import annotations

import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).parent.parent / "detectors"))
from flowbatch import flow_batch
from test_matcher_reference import reference

from pipeline.intel.lists import parse_entry
from pipeline.intel.model import Indicator
from pipeline.runtime.intel_follower import IntelFollower
from pipeline.transport.indicators import encode_indicator


class Message:
    def __init__(self, key: str, value: bytes | None) -> None:
        self._key, self._value = key.encode(), value

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> None:
        return None


def indicator(n: int, text: str) -> Indicator:
    return Indicator(id=f"i{n}", value=text, source="feed", conditions=(parse_entry(text),))


ADDRESSES = [f"198.51.100.{k}" for k in range(0, 250, 10)] + ["2001:db8::7", "203.0.113.9"]
FLOWS = [{"src": "192.0.2.1", "dst": a, "sport": 5000, "dport": 443, "proto": 6} for a in ADDRESSES] + [
    {"src": a, "dst": "192.0.2.1", "sport": 80, "dport": 80, "proto": 6} for a in ADDRESSES
]


def check(follower: IntelFollower) -> None:
    live = list(follower.state.indicators.values())
    alerts = follower.handle.matcher.match(flow_batch(FLOWS))
    src, dst = alerts.column("src_addr").to_pylist(), alerts.column("dst_addr").to_pylist()
    got = sorted(zip(src, dst, alerts.column("indicator_id").to_pylist(), alerts.column("side").to_pylist(),
                     strict=True))  # fmt: skip
    batch = flow_batch(FLOWS)
    expected = sorted((batch.column("src_addr")[row].as_py(), batch.column("dst_addr")[row].as_py(), ind, side)
                      for row, ind, side in reference(live, FLOWS, []))  # fmt: skip
    assert got == expected
    assert follower.index.count == len(live)


def test_changes_apply_as_deltas_and_merge_in_the_background() -> None:
    follower = IntelFollower("127.0.0.1:1", "indicators", CollectorRegistry(), settle_seconds=0, merge_at=6)
    texts = ["198.51.100.0/28", "198.51.100.40", "198.51.100.50|443", "2001:db8::/64", "198.51.100.128/25"]
    for n, text in enumerate(texts):
        follower._apply(Message(f"i{n}", encode_indicator(indicator(n, text), "f")))
    follower._first_index()
    check(follower)
    main = follower.index.main
    # withdraw one, change one, add two: applied as a delta, the main index untouched
    follower._apply(Message("i1", None))
    follower._apply(Message("i2", encode_indicator(indicator(2, "198.51.100.50|80"), "f")))
    follower._apply(Message("i7", encode_indicator(indicator(7, "203.0.113.9"), "f")))
    follower._apply(Message("i8", encode_indicator(indicator(8, "198.51.100.60"), "f")))
    follower._apply_pending()
    assert follower.index.main is main and follower.index.pending == 5  # 3 added, 2 withdrawn
    check(follower)
    assert follower._merging is None
    # past merge_at: a background rebuild starts; changes during it still apply, then are laid over it
    follower._apply(Message("i4", None))
    follower._apply(Message("i9", encode_indicator(indicator(9, "198.51.100.90"), "f")))
    follower._apply_pending()
    assert follower._merging is not None
    follower._apply(Message("i0", None))
    follower._apply(Message("i10", encode_indicator(indicator(10, "198.51.100.100"), "f")))
    follower._apply_pending()
    check(follower)
    follower._merging.join(30)
    follower._take_merged()
    assert follower.index.main is not main and follower.index.pending == 2  # the two changes made meanwhile
    check(follower)
