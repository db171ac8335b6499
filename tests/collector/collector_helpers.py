"""Helpers to build small flow-schema batches for sink and batcher tests."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from pipeline.schemas import FLOW_SCHEMA, ip_to_bytes16


def flow_batch(n: int, start: dt.datetime, step_s: float = 1.0, first_port: int = 1) -> pa.RecordBatch:
    """``n`` flows received ``step_s`` apart from ``start``; src_port numbers them from ``first_port``."""
    times = [start + dt.timedelta(seconds=i * step_s) for i in range(n)]
    cols: dict[str, list] = {}
    for field in FLOW_SCHEMA:
        if field.name == "time_received":
            cols[field.name] = times
        elif pa.types.is_fixed_size_binary(field.type):
            cols[field.name] = [ip_to_bytes16(f"192.0.2.{i % 250 + 1}") for i in range(n)]
        elif pa.types.is_timestamp(field.type):
            cols[field.name] = times
        elif field.name == "src_port":
            cols[field.name] = [(first_port + i) % 65536 for i in range(n)]
        else:
            cols[field.name] = [i % 200 for i in range(n)]
    return pa.RecordBatch.from_pydict(cols, schema=FLOW_SCHEMA)
