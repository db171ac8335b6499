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
    assert b.poll(now=10.9) == []
    ready = b.poll(now=11.0)
    assert len(ready) == 1 and ready[0].batch.num_rows == 10 and ready[0].first == 10.0
    assert b.poll(now=100.0) == []


def test_one_huge_batch_is_split():
    b = Batcher(FLOW_SCHEMA, max_rows=10, max_seconds=1.0)
    out = b.add(flow_batch(35, T0), now=0.0)
    assert [r.batch.num_rows for r in out] == [10, 10, 10]
    assert [r.batch.num_rows for r in b.drain()] == [5]
