import datetime as dt

from collector_helpers import flow_batch

from pipeline.collector.batcher import Batcher
from pipeline.schemas import FLOW_SCHEMA

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def test_cuts_at_max_rows_keeping_order_and_rest():
    b = Batcher(FLOW_SCHEMA, max_rows=100, max_seconds=60)
    out = []
    for i in range(7):
        out += b.add(flow_batch(40, T0, first_port=i * 40), now=0.0)
    assert [r.batch.num_rows for r in out] == [100, 100]
    assert b.rows == 80
    out += b.drain()
    ports = [p for r in out for p in r.batch.column("src_port").to_pylist()]
    assert ports == list(range(280))
    assert b.rows == 0 and b.drain() == []


def test_cuts_on_age_and_reports_first_arrival():
    b = Batcher(FLOW_SCHEMA, max_rows=1000, max_seconds=1.0)
    assert b.add(flow_batch(5, T0), now=10.0) == []
    assert b.add(flow_batch(5, T0), now=10.5) == []
    assert b.collect(now=10.9) == []
    ready = b.collect(now=11.0)
    assert len(ready) == 1 and ready[0].batch.num_rows == 10 and ready[0].first == 10.0
    assert b.collect(now=100.0) == []


def test_one_huge_batch_is_split():
    b = Batcher(FLOW_SCHEMA, max_rows=10, max_seconds=1.0)
    out = b.add(flow_batch(35, T0), now=0.0)
    assert [r.batch.num_rows for r in out] == [10, 10, 10]
    assert [r.batch.num_rows for r in b.drain()] == [5]


def _fill_ports(spans, first_port: int) -> int:
    """Write consecutive source ports into reserved rows (standing in for the decoder)."""
    port = first_port
    for cols, at, count in spans:
        for values in cols.values.values():
            values[at : at + count] = 0
        for ok in cols.valid.values():
            ok[at : at + count] = False
        cols.values["src_port"][at : at + count] = range(port, port + count)
        port += count
    return port


def test_reserved_rows_come_out_in_order_with_added_batches():
    b = Batcher(FLOW_SCHEMA, max_rows=100, max_seconds=60)
    port = _fill_ports(b.reserve(130, now=0.0), 0)
    out = b.collect(now=0.0)
    assert [r.batch.num_rows for r in out] == [100] and b.rows == 30
    out += b.add(flow_batch(40, T0, first_port=port), now=0.0)  # closes the 30 reserved rows first
    port += 40
    port = _fill_ports(b.reserve(50, now=0.0), port)  # closes the 40 added rows first
    out += b.collect(now=0.0) + b.drain()
    assert [r.batch.num_rows for r in out] == [100, 30, 40, 50]
    ports = [p for r in out for p in r.batch.column("src_port").to_pylist()]
    assert ports == list(range(220))
    assert all(r.batch.schema == FLOW_SCHEMA for r in out)
    assert out[0].batch.column("flow_start").null_count == 100  # validity is kept
    assert b.rows == 0 and b.rows_in == 220


def test_reserved_rows_close_on_age_and_discarded_rows_are_left_out():
    b = Batcher(FLOW_SCHEMA, max_rows=1000, max_seconds=1.0)
    spans = b.reserve(10, now=10.0)
    _fill_ports(spans, 0)
    cols, at, _ = spans[0]
    cols.discard(at + 2, at + 5)
    assert b.collect(now=10.9) == []
    ready = b.collect(now=11.0)
    assert len(ready) == 1 and ready[0].first == 10.0
    assert ready[0].batch.column("src_port").to_pylist() == [0, 1, 5, 6, 7, 8, 9]
