"""Worker-side pre-aggregation: one batch's indicator hits grouped into partial aggregates
(``schemas/partial/v1.json``), so the confirmation stage receives a few messages per batch instead of
one per alert. Grouping is array work (one sort, segment reductions); Python only builds the dict of
each resulting group.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detectors.index import IndicatorIndex
from detectors.matcher import Hits
from pipeline.schemas import bytes16_to_ip

TCP = 6
SYN, ACK = 0x02, 0x10
SIDE_NAMES = ("any", "src", "dst")


def flow_times_ms(batch: pa.RecordBatch, rows: np.ndarray | None = None) -> np.ndarray:
    """Each flow's time in ms: its end, else its receipt (the time the matcher checks validity at)."""
    end, received = batch.column("flow_end"), batch.column("time_received")
    if rows is not None:
        take = pa.array(rows, type=pa.int64())
        end, received = end.take(take), received.take(take)
    when = pc.if_else(pc.is_null(end), received, end)
    return when.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False) // 1000


def flow_kinds(protocol: np.ndarray, flags: np.ndarray, packets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(established, probe) per flow. Established: TCP with ACK (the handshake completed). Probe: TCP
    with SYN and no ACK, or a non-TCP flow of one packet — what an unanswered scan leaves."""
    tcp = protocol == TCP
    established = tcp & ((flags & ACK) != 0)
    probe = (tcp & ((flags & SYN) != 0) & ((flags & ACK) == 0)) | (~tcp & (packets <= 1))
    return established, probe


def _int_at(batch: pa.RecordBatch, name: str, rows: np.ndarray) -> np.ndarray:
    column = batch.column(name).take(pa.array(rows, type=pa.int64()))
    return column.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)


def _raw_at(batch: pa.RecordBatch, name: str, rows: np.ndarray) -> np.ndarray:
    column = batch.column(name)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    column = column.fill_null(bytes(16)) if column.null_count else column
    buf = np.frombuffer(column.buffers()[1], np.uint8, count=16 * (len(column) + column.offset))
    return buf[16 * column.offset :].reshape(-1, 16)[rows]


def _segments(keys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sort order over the key columns (last varies slowest) and the start of each equal run."""
    order = np.lexsort(keys)
    change = np.zeros(len(order), dtype=bool)
    change[:1] = True
    for k in keys:
        s = k[order]
        change[1:] |= s[1:] != s[:-1]
    return order, np.flatnonzero(change)


def indicator_partials(
    batch: pa.RecordBatch, hits: Hits, index: IndicatorIndex, window_seconds: int
) -> list[dict[str, Any]]:
    """Partials of kind ``indicator``: per (indicator, window), the hosts that talked to it with their
    flows, packets, bytes, first/last seen and flow kinds. The host is the flow's address opposite the
    matched side."""
    rows, inds, sides = hits
    if not len(rows):
        return []
    src, dst = _raw_at(batch, "src_addr", rows), _raw_at(batch, "dst_addr", rows)
    host = np.where((sides == 1)[:, None], dst, src)
    words = np.ascontiguousarray(host).view(">u8").reshape(-1, 2).astype(np.uint64)
    t = flow_times_ms(batch, rows)
    size = 1000 * window_seconds
    window = t - t % size
    packets, octets = _int_at(batch, "packets", rows), _int_at(batch, "octets", rows)
    established, probe = flow_kinds(
        _int_at(batch, "protocol", rows), _int_at(batch, "tcp_flags", rows), packets
    )
    exporter_raw = _raw_at(batch, "exporter", rows)
    exporter_keys, exporter_code = np.unique(exporter_raw.view("V16").ravel(), return_inverse=True)
    ind64 = inds.astype(np.int64)
    order, starts = _segments([words[:, 1], words[:, 0], window, ind64])
    ends = np.append(starts[1:], len(order))
    o = order
    agg = {
        "flows": ends - starts,
        "packets": np.add.reduceat(packets[o], starts),
        "bytes": np.add.reduceat(octets[o], starts),
        "first_seen": np.minimum.reduceat(t[o], starts),
        "last_seen": np.maximum.reduceat(t[o], starts),
        "established_flows": np.add.reduceat(established[o].astype(np.int64), starts),
        "probe_flows": np.add.reduceat(probe[o].astype(np.int64), starts),
        "side_bits": np.bitwise_or.reduceat((1 << sides[o].astype(np.int64)), starts),
    }
    g_ind, g_window, g_row = ind64[o][starts], window[o][starts], o[starts]
    # Exporters per (indicator, window): distinct (group, exporter) pairs.
    iw_order, iw_starts = _segments([window, ind64])
    segment = np.zeros(len(rows), np.int64)
    segment[iw_starts] = 1
    iw_id = np.empty(len(rows), np.int64)
    iw_id[iw_order] = np.cumsum(segment) - 1
    pairs = np.unique(iw_id * len(exporter_keys) + exporter_code)
    exporters_of: dict[int, list[str]] = {}
    for pair in pairs.tolist():
        exporters_of.setdefault(pair // len(exporter_keys), []).append(
            str(bytes16_to_ip(bytes(exporter_keys[pair % len(exporter_keys)])))
        )
    unique_inds = np.unique(g_ind)
    attrs = index.attributes.take(pa.array(unique_inds, type=pa.int64())).to_pylist()
    attr_of = dict(zip(unique_inds.tolist(), attrs, strict=True))
    out: dict[tuple[int, int], dict[str, Any]] = {}
    columns = {k: v.tolist() for k, v in agg.items()}
    for j, (ind, win, row) in enumerate(zip(g_ind.tolist(), g_window.tolist(), g_row.tolist(), strict=True)):
        partial = out.get((ind, win))
        if partial is None:
            a = attr_of[ind]
            valid_until = a["valid_until"]
            partial = out[(ind, win)] = {
                "kind": "indicator", "key": a["indicator_id"], "window_start": win,
                "window_seconds": window_seconds, "hosts": [],
                "exporters": exporters_of[int(iw_id[row])],
                "indicator": {
                    "id": a["indicator_id"], "value": a["indicator"], "name": a["indicator_name"],
                    "source": a["source"], "confidence": a["confidence"], "tlp": a["tlp"],
                    "valid_until": valid_until.isoformat().replace("+00:00", "Z") if valid_until else None,
                },
                "scan": None,
            }  # fmt: skip
        bits = columns["side_bits"][j]
        partial["hosts"].append({
            "host": str(bytes16_to_ip(host[row].tobytes())),
            **{k: columns[k][j] for k in ("flows", "packets", "bytes", "first_seen", "last_seen",
                                           "established_flows", "probe_flows")},
            "sides": [name for code, name in enumerate(SIDE_NAMES) if code and bits & (1 << code)],
        })  # fmt: skip
    return list(out.values())
