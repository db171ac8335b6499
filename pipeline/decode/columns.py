"""Turn decoded record fields plus per-record packet context into a flow-schema record batch.

Everything here is whole-array numpy: one call handles every record of one template from a whole batch
of datagrams, whatever the export version.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.decode import ies
from pipeline.schemas import FLOW_SCHEMA

NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
FieldArrays = dict[int, np.ndarray]
"""IE -> values: a 1-D unsigned array for natural widths, else an (n, length) uint8 array."""


@dataclass
class Context:
    """Per-record values that come from the packet, not the record."""

    exporter: np.ndarray  # (n, 16) uint8
    exporter_port: np.ndarray  # uint16
    domain: np.ndarray  # uint32
    version: np.ndarray  # uint8
    received_us: np.ndarray  # int64
    export_us: np.ndarray  # int64: header export time
    uptime_ms: np.ndarray  # int64: header sysUptime (v5/v9), -1 where none
    sysinit_ms: np.ndarray  # int64: IPFIX systemInitTimeMilliseconds known from options, -1 if not
    sampling: np.ndarray  # uint32


def as_uint(values: np.ndarray) -> np.ndarray:
    """Any field encoding (reduced-size included) as uint64."""
    if values.ndim == 1:
        return values.astype(np.uint64)
    out = np.zeros(len(values), dtype=np.uint64)
    for i in range(max(0, values.shape[1] - 8), values.shape[1]):
        out = (out << np.uint64(8)) | values[:, i].astype(np.uint64)
    return out


def _first(fields: FieldArrays, candidates: tuple[int, ...]) -> np.ndarray | None:
    for ie in candidates:
        if ie in fields:
            return fields[ie]
    return None


def _address(fields: FieldArrays, v4: int, v6: int, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(n, 16) IPv4-mapped or IPv6 bytes, and a bool mask of rows holding IPv6 (None if no field).
    A template carries one family almost always: that case is two slice copies, no masks."""
    a4 = fields.get(v4)
    a6 = fields.get(v6)
    a4 = a4 if a4 is not None and a4.ndim == 2 and a4.shape[1] == 4 else None
    a6 = a6 if a6 is not None and a6.ndim == 2 and a6.shape[1] == 16 else None
    if a4 is None and a6 is None:
        return np.zeros((n, 16), dtype=np.uint8), None
    if a6 is None:  # fill as four 32-bit words: 0, 0, 0x0000ffff (big-endian), the address bytes
        words = np.empty((n, 4), dtype=np.uint32)
        words[:, 0] = 0
        words[:, 1] = 0
        words[:, 2] = np.frombuffer(b"\x00\x00\xff\xff", dtype=np.uint32)[0]
        words[:, 3] = np.ascontiguousarray(a4).view(np.uint32).ravel()
        return words.view(np.uint8), np.zeros(n, dtype=bool)
    if a4 is None:
        return np.ascontiguousarray(a6), np.ones(n, dtype=bool)
    is_v6 = a6.any(axis=1)
    out = np.zeros((n, 16), dtype=np.uint8)
    out[is_v6] = a6[is_v6]
    out[~is_v6, 10:12] = 0xFF
    out[~is_v6, 12:] = a4[~is_v6]
    return out, is_v6


def _binary16(values: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    values = np.ascontiguousarray(values)
    validity = None
    if valid is not None and not valid.all():
        validity = pa.array(valid).buffers()[1]
    return pa.Array.from_buffers(pa.binary(16), len(values), [validity, pa.py_buffer(values)])


def _ntp_us(values: np.ndarray) -> np.ndarray:
    v = as_uint(values)
    secs = (v >> np.uint64(32)).astype(np.int64) - NTP_EPOCH_OFFSET
    frac = (v & np.uint64(0xFFFFFFFF)).astype(np.uint64)
    return secs * 1_000_000 + ((frac * np.uint64(1_000_000)) >> np.uint64(32)).astype(np.int64)


def _uptime_to_us(t: np.ndarray, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """sysUptime-relative ms -> absolute µs: via the header (v5/v9) or systemInitTime (IPFIX)."""
    t = as_uint(t).astype(np.int64)
    has_uptime = ctx.uptime_ms >= 0
    diff = ctx.uptime_ms - t
    diff[diff < -(1 << 31)] += 1 << 32  # uptime counter wrapped
    from_header = ctx.export_us - diff * 1000
    if has_uptime.all():  # every record came with a header sysUptime (v5/v9): nothing to choose
        return from_header, has_uptime
    from_init = (ctx.sysinit_ms + t) * 1000
    out = np.where(has_uptime, from_header, from_init)
    valid = has_uptime | (ctx.sysinit_ms >= 0)
    return out, valid


def _time(fields: FieldArrays, ctx: Context, start: bool) -> tuple[np.ndarray, np.ndarray]:
    n = len(ctx.export_us)
    if start:
        order = (
            ies.START_MILLIS,
            ies.START_MICROS,
            ies.START_NANOS,
            ies.START_SECONDS,
            ies.START_DELTA_US,
            ies.FIRST_SWITCHED,
        )
    else:
        order = (
            ies.END_MILLIS,
            ies.END_MICROS,
            ies.END_NANOS,
            ies.END_SECONDS,
            ies.END_DELTA_US,
            ies.LAST_SWITCHED,
        )
    for ie in order:
        v = fields.get(ie)
        if v is None:
            continue
        if ie in (ies.START_MILLIS, ies.END_MILLIS):
            return as_uint(v).astype(np.int64) * 1000, np.ones(n, dtype=bool)
        if ie in (ies.START_MICROS, ies.END_MICROS, ies.START_NANOS, ies.END_NANOS):
            return _ntp_us(v), np.ones(n, dtype=bool)
        if ie in (ies.START_SECONDS, ies.END_SECONDS):
            return as_uint(v).astype(np.int64) * 1_000_000, np.ones(n, dtype=bool)
        if ie in (ies.START_DELTA_US, ies.END_DELTA_US):
            return ctx.export_us - as_uint(v).astype(np.int64), np.ones(n, dtype=bool)
        return _uptime_to_us(v, ctx)
    return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)


def _times(fields: FieldArrays, ctx: Context) -> tuple[pa.Array, pa.Array]:
    start, start_ok = _time(fields, ctx, True)
    end, end_ok = _time(fields, ctx, False)
    for ie, scale in ((ies.DURATION_MS, 1000), (ies.DURATION_US, 1)):
        dur = fields.get(ie)
        if dur is not None:
            d = as_uint(dur).astype(np.int64) * scale
            end = np.where(end_ok, end, start + d)
            start = np.where(start_ok, start, end - d)
            end_ok = end_ok | start_ok
            start_ok = start_ok | end_ok
            break
    return timestamps(start, start_ok), timestamps(end, end_ok)


TIMESTAMP = pa.timestamp("us", tz="UTC")


def timestamps(us: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """int64 microseconds as a UTC timestamp array, zero-copy (``pa.array`` with a time-zone type
    converts element by element: milliseconds per batch)."""
    us = np.ascontiguousarray(us, dtype=np.int64)
    validity = None
    if valid is not None and not valid.all():
        validity = pa.array(valid).buffers()[1]
    return pa.Array.from_buffers(TIMESTAMP, len(us), [validity, pa.py_buffer(us)])


def _counter(fields: FieldArrays, groups: tuple[tuple[int, ...], ...], n: int) -> np.ndarray:
    for group in groups:
        if all(ie in fields for ie in group):
            total = np.zeros(n, dtype=np.uint64)
            for ie in group:
                total += as_uint(fields[ie])
            return total
    return np.zeros(n, dtype=np.uint64)


def build_batch(fields: FieldArrays, n: int, ctx: Context) -> pa.RecordBatch:
    """One flow-schema batch from ``n`` records' fields and their packet context."""
    src, src_v6 = _address(fields, ies.SRC_V4, ies.SRC_V6, n)
    dst, dst_v6 = _address(fields, ies.DST_V4, ies.DST_V6, n)
    nh, nh_v6 = _address(fields, ies.NEXT_HOP_V4, ies.NEXT_HOP_V6, n)
    if nh_v6 is None:
        nh, nh_v6 = _address(fields, ies.BGP_NEXT_HOP_V4, ies.BGP_NEXT_HOP_V6, n)
    if ies.IP_VERSION in fields:
        ip_version = as_uint(fields[ies.IP_VERSION]).astype(np.uint8)
    else:
        family = src_v6 if src_v6 is not None else dst_v6
        ip_version = (
            np.where(family, 6, 4).astype(np.uint8) if family is not None else np.full(n, 4, np.uint8)
        )
    start, end = _times(fields, ctx)
    columns: dict[str, pa.Array] = {
        "time_received": timestamps(ctx.received_us),
        "exporter": _binary16(ctx.exporter),
        "exporter_port": pa.array(ctx.exporter_port, type=pa.uint16()),
        "observation_domain": pa.array(ctx.domain, type=pa.uint32()),
        "flow_version": pa.array(ctx.version, type=pa.uint8()),
        "flow_start": start,
        "flow_end": end,
        "src_addr": _binary16(src),
        "dst_addr": _binary16(dst),
        "next_hop": _binary16(nh, None if nh_v6 is not None else np.zeros(n, dtype=bool)),
        "packets": pa.array(_counter(fields, ies.PACKETS, n), type=pa.uint64()),
        "octets": pa.array(_counter(fields, ies.OCTETS, n), type=pa.uint64()),
        "ip_version": pa.array(ip_version, type=pa.uint8()),
        "sampling_rate": pa.array(ctx.sampling, type=pa.uint32()),
    }
    for name, candidates in ies.UINT_COLUMNS.items():
        values = _first(fields, candidates)
        arrow_type = FLOW_SCHEMA.field(name).type
        target = arrow_type.to_pandas_dtype()
        if values is None:
            raw = np.zeros(n, dtype=target)
        elif values.ndim == 1:
            raw = values.astype(target)  # byte swap and width change in one pass
        else:
            raw = as_uint(values).astype(target)
        columns[name] = pa.array(raw, type=arrow_type)
    icmp = _icmp(fields, n)
    if icmp is not None:
        dst_port = columns["dst_port"].to_numpy(zero_copy_only=False)
        columns["dst_port"] = pa.array(
            np.where(dst_port == 0, icmp, dst_port).astype(np.uint16), type=pa.uint16()
        )
    return pa.RecordBatch.from_arrays([columns[f.name] for f in FLOW_SCHEMA], schema=FLOW_SCHEMA)


def _icmp(fields: FieldArrays, n: int) -> np.ndarray | None:
    """ICMP type*256+code from whichever ICMP IEs the template has (None if it has none)."""
    found = None
    for ie in ies.ICMP_TYPE_CODE:
        if ie in fields:
            value = as_uint(fields[ie])
            found = value if found is None else np.where(found == 0, value, found)
    for type_ie, code_ie in ies.ICMP_TYPE_AND_CODE:
        if type_ie in fields:
            code = as_uint(fields[code_ie]) if code_ie in fields else np.zeros(n, dtype=np.uint64)
            value = (as_uint(fields[type_ie]) << np.uint64(8)) | code
            found = value if found is None else np.where(found == 0, value, found)
    return found


def empty_batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in FLOW_SCHEMA], schema=FLOW_SCHEMA)
