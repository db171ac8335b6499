"""Horizontal scans: per batch, the partial aggregates of outside addresses probing inside ones.

A group is (outside source, destination port, protocol, window) over the flows that go from outside
the constituency to inside it. Only groups with at least one *probe* flow in the batch (TCP with SYN
and no ACK, or a non-TCP flow of at most one packet) produce a partial, so the outside clients of a
busy server do not; such a group then counts every flow of the batch it holds. The confirmation stage
merges partials (:func:`detectors.detections.merge`) and its rules decide what is a scan.

Cost follows the probes, not the traffic. The whole batch sees a few numpy passes: the probe test
(protocol, flags, packets) and a 64-bit hash of (source, port, protocol) looked up in a small bitmap of
the probing keys. Only the rows that pass (the probing groups' flows and a few hash collisions) have
their addresses checked against the constituency and are grouped exactly by a sort of the full keys.
A flood of forged sources (one probing key each) is cut to the busiest keys before that work.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detectors.addresses import Addresses
from detectors.constituency import Constituency
from detectors.detections import TLP_ORDER
from detectors.distinct import EXACT_LIMIT, TargetSet
from pipeline.config import ConfigError
from pipeline.schemas import V4_MAPPED_PREFIX

TCP = 6
SYN, ACK = 0x02, 0x10
DEFAULT_MAX_GROUPS = 5_000
_V4_PREFIX = np.frombuffer(V4_MAPPED_PREFIX, np.uint8)
_ZERO10 = bytes(10)


@dataclass(frozen=True)
class ScanConfig:
    """Section ``[scan]``."""

    enabled: bool = True
    tlp: str = "green"
    """TLP of scan detections: what this network decides about sharing what it saw."""
    max_groups_per_batch: int = DEFAULT_MAX_GROUPS
    """Partials per batch at most. A flood of spoofed SYNs makes one probing group per forged source;
    beyond this bound the (source, port, protocol) keys with the fewest probes, then the groups with
    the fewest distinct targets, are dropped (and counted) before any more work is spent on them.
    Ordinary traffic makes far fewer: ~1,000 per 65,536-flow batch with 3% probes (benchmarks)."""

    def validate(self) -> ScanConfig:
        if self.tlp not in TLP_ORDER:
            raise ConfigError(f"scan.tlp: expected one of {', '.join(TLP_ORDER)}, got {self.tlp!r}")
        if self.max_groups_per_batch < 1:
            raise ConfigError("scan.max_groups_per_batch: must be >= 1")
        return self


@dataclass
class ScanStats:
    """Counters across batches (the worker exports them as metrics)."""

    flows: int = 0
    probe_flows: int = 0
    """Inbound probes (outside -> inside) seen."""
    group_flows: int = 0
    """Flows counted in emitted partials."""
    partials: int = 0
    groups_dropped: int = 0
    """Probing keys (or groups) beyond ``max_groups_per_batch``: evidence not reported."""
    untimed_flows: int = 0
    """Flows with neither an end time nor a receipt time: no window, not counted."""


_C1 = np.uint64(0x9E3779B97F4A7C15)
_C2 = np.uint64(0xC2B2AE3D27D4EB4F)
_C3 = np.uint64(0xBF58476D1CE4E5B9)


def _key_hash(words: np.ndarray, port: np.ndarray, proto: np.ndarray) -> np.ndarray:
    """64-bit hash of (address words (n, 2) uint64, port, protocol); its top bits index the bitmap.
    Only a prefilter: grouping is exact afterwards, so collisions cost time, never correctness."""
    with np.errstate(over="ignore"):
        k = words[:, 0] * _C1
        k ^= words[:, 1]
        k ^= (port.astype(np.uint64) << np.uint64(8) | proto) * _C2
        k ^= k >> np.uint64(29)
        k *= _C3
        k ^= k >> np.uint64(32)
    return k


def _raw16(column: pa.Array) -> np.ndarray:
    """A fixed_size_binary[16] column as (n, 16) uint8, zero-copy (nulls as ::)."""
    if column.null_count:
        column = column.fill_null(bytes(16))
    n, offset = len(column), column.offset
    buf = np.frombuffer(column.buffers()[1], dtype=np.uint8, count=16 * (n + offset))
    return buf[16 * offset :].reshape(n, 16)


def _ints(column: pa.Array, rows: np.ndarray | None = None) -> np.ndarray:
    """An integer column as numpy (zero-copy when whole and without nulls; nulls as 0)."""
    if rows is not None:
        column = column.take(pa.array(rows, type=pa.int64()))
    if column.null_count:
        column = column.fill_null(0)
    return column.to_numpy(zero_copy_only=False)


def _one_batch(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    if isinstance(batch, pa.RecordBatch):
        return batch
    table = batch.combine_chunks()
    batches = table.to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


def _changes(*keys: np.ndarray) -> np.ndarray:
    """Bool per sorted row: any key differs from the row before (True for row 0)."""
    out = np.empty(len(keys[0]), dtype=bool)
    if len(out):
        out[0] = True
        np.not_equal(keys[0][1:], keys[0][:-1], out=out[1:])
        for key in keys[1:]:
            out[1:] |= key[1:] != key[:-1]
    return out


def scan_partials(
    batch: pa.RecordBatch | pa.Table,
    constituency: Constituency,
    window_seconds: int,
    tlp: str | None = "green",
    max_groups: int = DEFAULT_MAX_GROUPS,
    stats: ScanStats | None = None,
) -> list[dict[str, Any]]:
    """The ``schemas/partial/v1.json`` scan partials of one flow batch (see the module docstring)."""
    if window_seconds < 1:
        raise ValueError("window_seconds must be >= 1")
    batch = _one_batch(batch)
    stats = stats if stats is not None else ScanStats()
    n = batch.num_rows
    stats.flows += n
    if not n or not constituency:
        return []
    proto = _ints(batch.column("protocol")).astype(np.uint8, copy=False)
    flags = _ints(batch.column("tcp_flags"))
    packets = _ints(batch.column("packets"))
    tcp = proto == TCP
    probe = np.where(tcp, (flags & (SYN | ACK)) == SYN, packets <= 1)
    rows = np.flatnonzero(probe)
    if not len(rows):
        return []
    src_raw, dst_raw = _raw16(batch.column("src_addr")), _raw16(batch.column("dst_addr"))
    src_as, dst_as = batch.column("src_as"), batch.column("dst_as")
    inbound = ~constituency.contains(Addresses(src_raw[rows]), _ints(src_as, rows).astype(np.int64))
    inbound &= constituency.contains(Addresses(dst_raw[rows]), _ints(dst_as, rows).astype(np.int64))
    rows = rows[inbound]
    stats.probe_flows += len(rows)
    if not len(rows):
        return []

    # Prefilter: every row whose (source, port, protocol) hash is one a probe has.
    port = _ints(batch.column("dst_port"))
    words = np.ascontiguousarray(src_raw).view(np.uint64).reshape(n, 2)
    hashes = _key_hash(words, port, proto)
    probing, probes_per_key = np.unique(hashes[rows], return_counts=True)
    if len(probing) > max_groups:  # a flood of forged sources: group only the busiest keys
        busiest = np.argsort(-probes_per_key, kind="stable")[:max_groups]
        stats.groups_dropped += len(probing) - max_groups
        probing = np.sort(probing[busiest])
    bits = int(min(max((32 * len(probing)).bit_length(), 12), 24))
    bitmap = np.zeros(1 << bits, dtype=bool)
    shift = np.uint64(64 - bits)
    bitmap[probing >> shift] = True
    cand = np.flatnonzero(bitmap[hashes >> shift])
    pos = np.minimum(np.searchsorted(probing, hashes[cand]), len(probing) - 1)
    cand = cand[probing[pos] == hashes[cand]]
    inbound = ~constituency.contains(Addresses(src_raw[cand]), _ints(src_as, cand).astype(np.int64))
    inbound &= constituency.contains(Addresses(dst_raw[cand]), _ints(dst_as, cand).astype(np.int64))
    cand = cand[inbound]

    # Flow time (end, else receipt) in ms and its window.
    take = pa.array(cand, type=pa.int64())
    when = pc.coalesce(batch.column("flow_end").take(take), batch.column("time_received").take(take))
    if when.null_count:
        timed = pc.is_valid(when).to_numpy(zero_copy_only=False)
        stats.untimed_flows += int((~timed).sum())
        cand, when = cand[timed], when.filter(pa.array(timed))
        if not len(cand):
            return []
    ms = when.cast(pa.int64()).to_numpy(zero_copy_only=False) // 1000
    size = 1000 * window_seconds
    window = ms - ms % size

    # Exact groups: sort by (source, port, protocol, window), then target within each group.
    src_w = words[cand]
    dst_w = np.ascontiguousarray(dst_raw[cand]).view(">u8").reshape(-1, 2)
    pp = port[cand].astype(np.int64) << 8 | proto[cand]
    order = np.lexsort((dst_w[:, 1], dst_w[:, 0], window, pp, src_w[:, 1], src_w[:, 0]))
    cand, ms, window, pp = cand[order], ms[order], window[order], pp[order]
    src_w, dst_w = src_w[order], dst_w[order]
    new_group = _changes(src_w[:, 0], src_w[:, 1], pp, window)
    new_target = new_group | _changes(dst_w[:, 0], dst_w[:, 1])
    starts = np.flatnonzero(new_group)
    group_of = np.cumsum(new_group) - 1

    target_rows = np.flatnonzero(new_target)
    targets_per_group = np.bincount(group_of[target_rows], minlength=len(starts))
    c_flags, c_proto = flags[cand], proto[cand]
    c_tcp = c_proto == TCP
    c_probe = probe[cand]
    probes = np.add.reduceat(c_probe.astype(np.int64), starts)
    keep = np.flatnonzero(probes > 0)
    if len(keep) > max_groups:  # the most distinct targets first, then the most probes
        rank = np.lexsort((keep, -probes[keep], -targets_per_group[keep]))
        stats.groups_dropped += len(keep) - max_groups
        keep = np.sort(keep[rank[:max_groups]])
    if not len(keep):
        return []

    # Sums, extremes and distinct counts per group, then only the kept groups' values as Python lists.
    flows = np.diff(np.append(starts, len(cand)))
    pkts = np.add.reduceat(packets[cand], starts)
    octets = np.add.reduceat(_ints(batch.column("octets"))[cand], starts)
    established = np.add.reduceat((c_tcp & (c_flags & ACK > 0)).astype(np.int64), starts)
    first, last = np.minimum.reduceat(ms, starts), np.maximum.reduceat(ms, starts)
    heads = starts[keep]
    stats.group_flows += int(flows[keep].sum())

    # Distinct exporters per group: exporter ids (numbered in text order), then unique (group, exporter)
    # pairs; each kept group's exporter texts are one slice of the pairs' texts.
    exporter = batch.column("exporter")
    exporter = exporter.fill_null(bytes(16)) if exporter.null_count else exporter
    encoded = pc.dictionary_encode(exporter.take(pa.array(cand, type=pa.int64())))
    exp_text = address_texts(_raw16(encoded.dictionary))
    by_text = sorted(range(len(exp_text)), key=exp_text.__getitem__)
    text_rank = np.empty(len(exp_text), np.int64)
    text_rank[by_text] = np.arange(len(exp_text))
    exp_id = text_rank[_ints(encoded.indices)]
    pairs = np.unique(group_of * len(exp_text) + exp_id)
    pair_group = pairs // len(exp_text)
    pair_text = [exp_text[by_text[e]] for e in (pairs % len(exp_text)).tolist()]
    pair_lo = np.searchsorted(pair_group, keep).tolist()
    pair_hi = np.searchsorted(pair_group, keep + 1).tolist()

    # Targets: the texts of small groups' targets (already in byte order, as TargetSet sorts them),
    # a TargetSet (HyperLogLog) for the groups beyond the exact limit.
    small = np.zeros(len(starts), dtype=bool)
    small[keep] = targets_per_group[keep] <= EXACT_LIMIT
    small_rows = target_rows[small[group_of[target_rows]]]
    target_text = address_texts(dst_raw[cand[small_rows]])
    small_start = np.concatenate(([0], np.cumsum(np.where(small, targets_per_group, 0))))[keep].tolist()
    target_start = np.concatenate(([0], np.cumsum(targets_per_group)))

    scanners = address_texts(src_raw[cand[heads]])
    columns = zip(
        keep.tolist(), small[keep].tolist(), small_start, targets_per_group[keep].tolist(), pair_lo, pair_hi,
        scanners, (pp[heads] >> 8).tolist(), (pp[heads] & 0xFF).tolist(), window[heads].tolist(),
        flows[keep].tolist(), pkts[keep].tolist(), octets[keep].tolist(), first[keep].tolist(),
        last[keep].tolist(), established[keep].tolist(), probes[keep].tolist(), strict=True,
    )  # fmt: skip
    out = []
    for (g, exact, at, n_targets, e_lo, e_hi, scanner, p_port, p_proto, w, n_flows, n_pkts, n_bytes, t_first,
         t_last, n_est, n_probe) in columns:  # fmt: skip
        if exact:
            distinct: dict[str, Any] = {"targets": target_text[at : at + n_targets], "hll": None}
        else:
            targets = TargetSet()
            targets.add_raw(dst_raw[cand[target_rows[target_start[g] : target_start[g + 1]]]])
            distinct = targets.to_json()
        scan = {"scanner": scanner, "protocol": p_proto, "port": p_port, **distinct, "tlp": tlp}
        host = {
            "host": None, "flows": n_flows, "packets": n_pkts, "bytes": n_bytes, "first_seen": t_first,
            "last_seen": t_last, "established_flows": n_est, "probe_flows": n_probe, "sides": ["src"],
        }  # fmt: skip
        out.append(
            {
                "kind": "scan",
                "key": f"scan|{scanner}|{p_proto}|{p_port}",
                "window_start": w,
                "window_seconds": window_seconds,
                "hosts": [host],
                "exporters": pair_text[e_lo:e_hi],
                "indicator": None,
                "scan": scan,
            }
        )
    stats.partials += len(out)
    return out


def address_texts(raw: np.ndarray) -> list[str]:
    """Text of (n, 16) flow-schema addresses exactly as :func:`pipeline.schemas.bytes16_to_ip` writes
    them, without an object per address: IPv4-mapped ones formatted by Arrow in one pass, IPv6 by the
    C library (its RFC 5952 form is ``ipaddress``'s, except the embedded-IPv4 forms under ::/80,
    which go through ``ipaddress``)."""
    mapped = (raw[:, :12] == _V4_PREFIX).all(axis=1)
    if mapped.all():
        return _v4_texts(raw[:, 12:])
    out = np.empty(len(raw), dtype=object)
    if mapped.any():
        out[mapped] = _v4_texts(raw[mapped, 12:])
    out[~mapped] = [_v6_text(b) for b in np.ascontiguousarray(raw[~mapped]).view("V16").ravel().tolist()]
    return out.tolist()


def _v4_texts(octets: np.ndarray) -> list[str]:
    parts = [pc.cast(pa.array(octets[:, i]), pa.string()) for i in range(4)]
    return pc.binary_join_element_wise(*parts, ".").to_pylist()


def _v6_text(value: bytes) -> str:
    if value[:10] == _ZERO10:
        return str(ipaddress.IPv6Address(value))
    return socket.inet_ntop(socket.AF_INET6, value)
