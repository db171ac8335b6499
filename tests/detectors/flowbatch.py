"""Flow batches for matcher tests, built directly in the flow schema (no decoder involved)."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa

from pipeline.schemas import FLOW_SCHEMA, ip_to_bytes16

WHEN = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def flow_batch(flows: list[dict]) -> pa.RecordBatch:
    """``flows``: dicts with src/dst (text) and optional ports, protocol, AS numbers, time (both times), or
    ``end`` (None: no flow end) and ``received`` apart, ``flags``, ``packets``, ``octets``, ``exporter``,
    ``sampling``."""
    rows = []
    for f in flows:
        src, dst = ip_to_bytes16(f["src"]), ip_to_bytes16(f["dst"])
        rows.append(
            {
                "time_received": f.get("received", f.get("time", WHEN)),
                "exporter": ip_to_bytes16(f.get("exporter", "192.0.2.254")),
                "exporter_port": 2055,
                "observation_domain": 0,
                "flow_version": 10,
                "flow_start": f.get("time", WHEN),
                "flow_end": f["end"] if "end" in f else f.get("time", WHEN),
                "src_addr": src,
                "dst_addr": dst,
                "next_hop": None,
                "src_port": f.get("sport", 0),
                "dst_port": f.get("dport", 0),
                "protocol": f.get("proto", 6),
                "tcp_flags": f.get("flags", 0),
                "tos": 0,
                "packets": f.get("packets", 1),
                "octets": f.get("octets", 100),
                "input_if": 0,
                "output_if": 0,
                "src_as": f.get("src_as", 0),
                "dst_as": f.get("dst_as", 0),
                "src_mask": 0,
                "dst_mask": 0,
                "ip_version": 6 if ":" in f["src"] else 4,
                "sampling_rate": f.get("sampling", 1),
            }
        )
    return pa.RecordBatch.from_pylist(rows, schema=FLOW_SCHEMA)
