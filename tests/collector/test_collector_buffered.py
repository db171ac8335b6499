import datetime as dt
from pathlib import Path

import pyarrow as pa
from collector_helpers import flow_batch
from prometheus_client import CollectorRegistry

from pipeline.sinks.base import SinkError
from pipeline.sinks.buffered import BufferedSink
from pipeline.sinks.parquet import ParquetSink, read_flows

T0 = dt.datetime(2026, 3, 4, 10, 0, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _value(reg: CollectorRegistry, name: str, sink: str) -> float:
    return reg.get_sample_value(name, {"sink": sink}) or 0.0


def test_real_parquet_sink_failure_buffers_then_recovers_in_order(tmp_path: Path):
    target = tmp_path / "archive"
    target.write_text("blocked")  # the sink cannot create its directory: a real OSError
    reg, clock = CollectorRegistry(), Clock()
    sink = BufferedSink(ParquetSink(target), reg, max_rows=10_000, retry_seconds=5, clock=clock)
    for i in range(3):
        sink.write(flow_batch(100, T0, first_port=i * 100))
    assert sink.failing and sink.buffered_rows == 300
    assert _value(reg, "shoal_sink_buffered_rows", "parquet") == 300
    assert _value(reg, "shoal_sink_errors_total", "parquet") == 1  # retries wait for the interval
    target.unlink()  # the disk comes back
    clock.t = 6
    sink.write(flow_batch(100, T0, first_port=300))
    assert not sink.failing and sink.buffered_rows == 0
    sink.close()
    table = read_flows(target)
    assert sorted(table.column("src_port").to_pylist()) == list(range(400))
    assert _value(reg, "shoal_sink_rows_written_total", "parquet") == 400
    assert _value(reg, "shoal_sink_dropped_rows_total", "parquet") == 0
    assert _value(reg, "shoal_sink_batches_written_total", "parquet") == 4


def test_buffer_is_bounded_and_drops_oldest_counted(tmp_path: Path):
    target = tmp_path / "archive"
    target.write_text("blocked")
    reg = CollectorRegistry()
    sink = BufferedSink(ParquetSink(target), reg, max_rows=250, retry_seconds=0.001)
    for i in range(10):
        sink.write(flow_batch(100, T0, first_port=i * 100))
    assert sink.buffered_rows <= 250
    assert sink.dropped_rows == 800
    assert _value(reg, "shoal_sink_dropped_rows_total", "parquet") == 800
    target.unlink()
    sink.close()
    # the newest data survived, the oldest was dropped
    assert sorted(read_flows(target).column("src_port").to_pylist()) == list(range(800, 1000))


def test_close_while_failing_counts_everything_undelivered(tmp_path: Path):
    target = tmp_path / "archive"
    target.write_text("blocked")
    reg = CollectorRegistry()
    sink = BufferedSink(ParquetSink(target), reg)
    sink.write(flow_batch(42, T0))
    sink.close()
    assert sink.dropped_rows == 42
    assert _value(reg, "shoal_sink_dropped_rows_total", "parquet") == 42
    assert _value(reg, "shoal_sink_buffered_rows", "parquet") == 0


class Flaky:
    """Any sink at all: refuses every other call."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls = 0
        self.got: list[pa.RecordBatch] = []

    def write(self, batch: pa.RecordBatch) -> None:
        self.calls += 1
        if self.calls % 2:
            raise SinkError("not now")
        self.got.append(batch)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_works_around_any_sink_and_shares_metric_families():
    reg = CollectorRegistry()
    a, b = Flaky(), Flaky()
    b.name = "other"
    sa = BufferedSink(a, reg, retry_seconds=0.0)
    sb = BufferedSink(b, reg, retry_seconds=0.0)
    for i in range(5):
        sa.write(flow_batch(3, T0, first_port=i * 3))
        sb.write(flow_batch(1, T0))
    sa.close()
    sb.close()
    assert [p for x in a.got for p in x.column("src_port").to_pylist()] == list(range(15))
    assert _value(reg, "shoal_sink_rows_written_total", "flaky") == 15
    assert _value(reg, "shoal_sink_rows_written_total", "other") == 5
    assert _value(reg, "shoal_sink_errors_total", "flaky") >= 3


def test_a_batch_the_sink_can_never_take_is_dropped_not_retried_forever(tmp_path: Path):
    """Issue 15, item 2: a batch that fails for what it holds (here: another schema) used to be kept
    and retried before every later batch, so nothing after it was ever written."""
    reg = CollectorRegistry()
    sink = BufferedSink(ParquetSink(tmp_path / "archive"), reg, retry_seconds=0.0)
    sink.write(pa.record_batch({"who": ["knows"] * 7}))
    sink.write(flow_batch(100, T0))
    sink.close()
    assert len(read_flows(tmp_path / "archive")) == 100
    assert (sink.buffered_rows, sink.dropped_rows, sink.written_rows) == (0, 7, 100)
    assert _value(reg, "shoal_sink_dropped_rows_total", "parquet") == 7
