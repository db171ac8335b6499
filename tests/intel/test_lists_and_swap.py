"""Plain lists and CSV with a column mapping; the atomic index swap frees the old index."""

from __future__ import annotations

import gc
import sys
import threading
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "detectors"))
from flowbatch import flow_batch

from detectors.index import IndicatorIndex
from detectors.matcher import Matcher, MatcherHandle
from pipeline.intel import load_source


def test_csv_with_column_mapping(tmp_path: Path) -> None:
    path = tmp_path / "feed.csv"
    path.write_text("first_seen,ip,port,comment\n2026-01-01,203.0.113.60,8080,c2\n2026-01-02,198.51.100.0/24,,scan\n"
                    "2026-01-03,bogus,,bad row\n")  # fmt: skip
    load = load_source(f"csv:{path}:ip:port")
    assert [i.value for i in load.indicators] == ["203.0.113.60|8080", "198.51.100.0/24"]
    assert len(load.errors) == 1 and "feed.csv:4" in load.errors[0]
    alerts = Matcher(IndicatorIndex.build(load.indicators)).match(flow_batch([
        {"src": "192.0.2.1", "dst": "203.0.113.60", "dport": 8080},
        {"src": "192.0.2.1", "dst": "203.0.113.60", "dport": 80},
        {"src": "198.51.100.7", "dst": "192.0.2.1"},
    ]))  # fmt: skip
    assert alerts.column("dst_port").to_pylist() == [8080, 0]


def test_swap_is_atomic_and_frees_the_old_index(tmp_path: Path) -> None:
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("203.0.113.70\n")
    second.write_text("203.0.113.71\n")
    old_index = IndicatorIndex.build(load_source(str(first)).indicators)
    handle = MatcherHandle(Matcher(old_index))
    ref = weakref.ref(old_index)
    batch = flow_batch(
        [{"src": "192.0.2.1", "dst": "203.0.113.70"}, {"src": "192.0.2.1", "dst": "203.0.113.71"}]
    )
    seen: list[set] = []
    stop = threading.Event()

    def reader() -> None:  # batches in flight always see one whole index, never a mix
        while not stop.is_set():
            seen.append(set(handle.match(batch).column("indicator").to_pylist()))

    thread = threading.Thread(target=reader)
    thread.start()
    handle.swap(IndicatorIndex.build(load_source(str(second)).indicators))
    stop.set()
    thread.join()
    assert {frozenset(s) for s in seen} <= {frozenset({"203.0.113.70"}), frozenset({"203.0.113.71"})}
    assert set(handle.match(batch).column("indicator").to_pylist()) == {"203.0.113.71"}
    del old_index
    gc.collect()
    assert ref() is None
