"""Scan detector cost per batch (flows/s/core of ``scan_partials``) and the HyperLogLog's error.

    .venv/bin/python -m benchmarks.bench_scan [--flows 1000000] [--repeat 5]

Traffic (fixed seed): a constituency of 8 IPv4 /16s and 2 IPv6 /32s with 60k inside hosts; 97% of
the flows are ordinary traffic (48% inbound, 48% outbound, 1% transit/internal; 75% TCP with
completed handshakes, 22% UDP of which a twentieth is one-packet DNS-like queries, 3% ICMP; 80%
IPv4), 3% are probes from 1,500 scanners (Zipf-distributed probe counts, 80% TCP SYN, 15% UDP, 5% ICMP
echo; 90% IPv4) to random inside hosts on one or two ports each. Batches of 65,536 rows (the
collector's) and of ``--flows`` rows are timed, without the bound on partials per batch; then a
flood of lone SYNs from forged sources with the default bound. The partials' JSON size is set beside
the batch's Arrow size (the partials topic against the flows topic).

The error table draws distinct random addresses (half IPv4, half IPv6) and compares TargetSet's
count with the truth over 30 sets per size.
"""
# The ``--repeat`` passes are timed as a whole (CPU time), not as a median of runs: the garbage
# collector's full passes come every few batches, and a steady state includes them.

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import time

import numpy as np
import pyarrow as pa

from benchmarks.machine import machine_line
from detectors.constituency import Constituency
from detectors.distinct import HLL_P, TargetSet
from detectors.scans import DEFAULT_MAX_GROUPS, ScanStats, scan_partials
from pipeline.allocator import tune_allocator
from pipeline.schemas import FLOW_SCHEMA

V4_PREFIXES = [(10 << 24) | (i << 16) for i in range(8)]  # 10.0.0.0/16 .. 10.7.0.0/16
V6_PREFIXES = [0x20010DB80000, 0x20010DB90000]  # 2001:db8::/32, 2001:db9::/32 (top 48 bits)
T0_US = 1_793_534_400_000_000  # 2026-11-01 12:00 UTC


def constituency() -> Constituency:
    nets = [ipaddress.ip_network((p, 16)) for p in V4_PREFIXES]
    nets += [ipaddress.ip_network((p << 80, 32)) for p in V6_PREFIXES]
    return Constituency(nets, [64500])


def addresses(n: int, inside: bool, v4_share: float, rng: np.random.Generator, pool: int) -> np.ndarray:
    """(n, 16) flow-schema addresses drawn from a pool of ``pool`` hosts, inside or outside."""
    raw = np.zeros((n, 16), np.uint8)
    host = rng.integers(0, pool, n).astype(np.uint64)
    v4 = rng.random(n) < v4_share
    if inside:
        prefix = np.array(V4_PREFIXES, np.uint64)[host % len(V4_PREFIXES)]
        value = prefix | (np.uint64(1) + host * np.uint64(2654435761) % np.uint64(65534))
    else:  # outside: anywhere in 11.0.0.0 .. 223.255.255.255, scattered
        value = np.uint64(11 << 24) + host * np.uint64(2654435761) % np.uint64(212 << 24)
    raw[:, 10:12] = 0xFF
    raw[:, 12:] = value.astype(">u4").view(np.uint8).reshape(n, 4)
    n6 = int((~v4).sum())
    six = np.zeros((n6, 16), np.uint8)
    top = (
        np.array(V6_PREFIXES, np.uint64)[host[~v4] % 2] if inside else np.full(n6, 0x2A0012340000, np.uint64)
    )
    six[:, :8] = (
        ((top << np.uint64(16)) | (host[~v4] >> np.uint64(8) & np.uint64(0xFFFF)))
        .astype(">u8")
        .view(np.uint8)
        .reshape(n6, 8)
    )
    six[:, 8:] = (host[~v4] * np.uint64(0x9E3779B97F4A7C15)).astype(">u8").view(np.uint8).reshape(n6, 8)
    raw[~v4] = six
    return raw


def traffic(n: int, rng: np.random.Generator) -> pa.RecordBatch:
    n_probe = n * 3 // 100
    n_legit = n - n_probe
    kind = rng.choice(3, n_legit, p=[0.485, 0.485, 0.03])  # inbound, outbound, transit/internal
    inside = addresses(n_legit, True, 0.8, rng, 60_000)
    outside = addresses(n_legit, False, 0.8, rng, 2_000_000)
    src = np.where((kind == 0)[:, None], outside, inside)
    dst = np.where((kind == 0)[:, None], inside, outside)
    transit = kind == 2
    dst[transit] = addresses(int(transit.sum()), bool(rng.random() < 0.5), 0.8, rng, 60_000)
    proto = rng.choice(np.array([6, 17, 1], np.uint8), n_legit, p=[0.75, 0.22, 0.03])
    packets = rng.integers(2, 200, n_legit).astype(np.uint64)
    packets[(proto == 17) & (rng.random(n_legit) < 0.05)] = 1  # one-packet queries
    flags = np.where(proto == 6, 0x1B, 0).astype(np.uint16)
    dport = rng.choice(np.array([443, 80, 53, 123, 993, 22, 8080], np.uint16), n_legit)
    dport = np.where(kind == 1, dport, rng.integers(1024, 65535, n_legit).astype(np.uint16))

    # Scanners: Zipf probe counts, one or two ports each.
    scanners = 1500
    weight = 1.0 / np.arange(1, scanners + 1)
    who = rng.choice(scanners, n_probe, p=weight / weight.sum())
    scanner_addr = addresses(scanners, False, 0.9, rng, 10_000_000)
    s_proto = rng.choice(np.array([6, 17, 1], np.uint8), scanners, p=[0.8, 0.15, 0.05])
    s_ports = rng.choice(np.array([22, 23, 80, 443, 445, 3389, 5060, 161, 8080], np.uint16), (scanners, 2))
    second = rng.random(n_probe) < 0.2
    p_port = np.where(second, s_ports[who, 1], s_ports[who, 0])
    p_proto = s_proto[who]
    p_port[p_proto == 1] = 2048
    p_src = scanner_addr[who]
    p_dst = addresses(n_probe, True, 1.0, rng, 60_000)
    v6_scanner = p_src[:, 10] != 0xFF
    p_dst[v6_scanner] = addresses(int(v6_scanner.sum()), True, 0.0, rng, 60_000)
    p_flags = np.where(p_proto == 6, 0x02, 0).astype(np.uint16)
    p_packets = np.ones(n_probe, np.uint64)

    order = rng.permutation(n)
    cat = lambda a, b: np.concatenate([a, b])[order]  # noqa: E731
    time_us = T0_US + rng.integers(0, 60_000_000, n)
    cols = {
        "time_received": pa.array(time_us, pa.timestamp("us", tz="UTC")),
        "exporter": _binary(
            np.tile(np.frombuffer(bytes(10) + b"\xff\xff\xc0\x00\x02\x01", np.uint8), (n, 1))
        ),
        "flow_start": pa.array(time_us - 5_000_000, pa.timestamp("us", tz="UTC")),
        "flow_end": pa.array(time_us - 100_000, pa.timestamp("us", tz="UTC")),
        "src_addr": _binary(cat(src, p_src)),
        "dst_addr": _binary(cat(dst, p_dst)),
        "src_port": pa.array(rng.integers(1024, 65535, n).astype(np.uint16)),
        "dst_port": pa.array(cat(dport, p_port)),
        "protocol": pa.array(cat(proto, p_proto)),
        "tcp_flags": pa.array(cat(flags, p_flags)),
        "packets": pa.array(cat(packets, p_packets)),
        "octets": pa.array(cat(packets * 700, p_packets * 60)),
        "sampling_rate": pa.array(np.ones(n, np.uint32)),
        "ip_version": pa.array(np.where(cat(src, p_src)[:, 10] == 0xFF, 4, 6).astype(np.uint8)),
    }
    arrays = []
    for field in FLOW_SCHEMA:
        if field.name in cols:
            arrays.append(cols[field.name])
        elif field.nullable:
            arrays.append(pa.nulls(n, field.type))
        else:
            arrays.append(pa.array(np.zeros(n, field.type.to_pandas_dtype())))
    return pa.RecordBatch.from_arrays(arrays, schema=FLOW_SCHEMA)


def _binary(raw: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(pa.binary(16), len(raw), [None, pa.py_buffer(np.ascontiguousarray(raw))])


def time_batches(
    batch: pa.RecordBatch, rows: int, repeat: int, frozen: bool, max_groups: int = 10**9
) -> tuple[float, ScanStats]:
    """CPU seconds per pass over the batch cut into ``rows``-row batches, amortised over ``repeat``
    passes (a worker's steady state: each batch's partials dropped once made, as once sent; the
    garbage collector's full collections, which the partials' dicts trigger, fall where they fall),
    and the last pass's counters. ``frozen``: the objects alive before (modules, this process's set-up) moved
    out of the collector's reach with ``gc.freeze()``, as a worker can do after start-up."""
    pieces = [batch.slice(i, rows) for i in range(0, batch.num_rows, rows)]
    cons = constituency()
    scan_partials(pieces[0], cons, 300)  # compiles the address kernels if the disk cache is cold
    gc.collect()
    if frozen:
        gc.freeze()
    stats = ScanStats()
    c0 = time.process_time()
    for _ in range(repeat):
        stats = ScanStats()
        for piece in pieces:
            scan_partials(piece, cons, 300, max_groups=max_groups, stats=stats)
    cpu = (time.process_time() - c0) / repeat
    gc.unfreeze()
    return cpu, stats


def flood(n: int, rng: np.random.Generator) -> pa.RecordBatch:
    """``n`` lone SYNs to port 80 of 16 inside hosts, each from a different forged source."""
    batch = traffic(n, rng)
    columns = dict(zip(batch.schema.names, batch.columns, strict=True))
    columns["src_addr"] = _binary(addresses(n, False, 1.0, rng, 2**31))
    columns["dst_addr"] = _binary(addresses(n, True, 1.0, rng, 16))
    columns["protocol"] = pa.array(np.full(n, 6, np.uint8))
    columns["tcp_flags"] = pa.array(np.full(n, 0x02, np.uint16))
    columns["dst_port"] = pa.array(np.full(n, 80, np.uint16))
    return pa.RecordBatch.from_arrays([columns[name] for name in batch.schema.names], schema=batch.schema)


def hll_errors(
    sizes: list[int], trials: int, rng: np.random.Generator
) -> list[tuple[int, float, float, float]]:
    """(n, mean signed error, RMS error, max abs error) of TargetSet.count() over ``trials`` sets."""
    out = []
    for n in sizes:
        errors = []
        for _ in range(trials):
            raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
            raw[: n // 2, :10], raw[: n // 2, 10:12] = 0, 0xFF
            raw[n // 2 :, 0] = 0x20
            raw = np.unique(raw.view("V16").ravel()).view(np.uint8).reshape(-1, 16)
            targets = TargetSet()
            targets.add_raw(raw)
            errors.append(targets.count() / len(raw) - 1)
        e = np.array(errors)
        out.append((n, float(e.mean()), float(np.sqrt((e**2).mean())), float(np.abs(e).max())))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument(
        "--repeat", type=int, default=5, help="passes over the flows per case (CPU time averaged)"
    )
    parser.add_argument("--trials", type=int, default=30, help="random sets per size in the error table")
    args = parser.parse_args()
    tune_allocator()
    print(machine_line())
    rng = np.random.default_rng(12)
    batch = traffic(args.flows, rng)
    arrow_bytes = batch.nbytes
    print(f"{args.flows:,} flows, 3% probes from 1,500 scanners; Arrow batch {arrow_bytes / 1e6:.1f} MB")
    for rows in (65_536, args.flows):
        for frozen in (False, True):
            cpu, stats = time_batches(batch, rows, args.repeat, frozen)
            print(
                f"batches of {rows:>9,} rows, {'gc frozen' if frozen else 'gc as is':9}: "
                f"{args.flows / cpu / 1e6:6.2f} M flows/s per core ({cpu:.3f} CPU-s)"
            )
        cons, pieces = constituency(), [batch.slice(i, rows) for i in range(0, batch.num_rows, rows)]
        json_bytes = sum(
            len(json.dumps(p)) for piece in pieces for p in scan_partials(piece, cons, 300, max_groups=10**9)
        )
        print(
            f"  per pass: {stats.partials:,} partials, {stats.probe_flows:,} inbound probes, {stats.group_flows:,} "
            f"flows in groups; partials {json_bytes / batch.num_rows:.1f} B JSON per flow "
            f"(the flows' Arrow form: {arrow_bytes / batch.num_rows:.0f} B per flow)"
        )
    forged = flood(args.flows, rng)
    for rows in (65_536, args.flows):
        cpu, stats = time_batches(forged, rows, 1, False, DEFAULT_MAX_GROUPS)
        print(
            f"spoofed SYN flood, batches of {rows:>9,} rows: {args.flows / cpu / 1e6:6.2f} M flows/s per core "
            f"({cpu:.3f} CPU-s); {stats.partials:,} partials, {stats.groups_dropped:,} groups dropped "
            f"(bound {DEFAULT_MAX_GROUPS:,} per batch)"
        )
    print(
        f"HyperLogLog p={HLL_P} (standard error {104 / np.sqrt(1 << HLL_P):.2f}%), {args.trials} sets per size:"
    )
    print(f"{'distinct':>10} {'mean err':>9} {'RMS err':>9} {'max |err|':>9}")
    for n, mean, rms, worst in hll_errors([300, 1000, 3000, 10_000, 30_000, 100_000], args.trials, rng):
        print(f"{n:>10,} {100 * mean:>8.2f}% {100 * rms:>8.2f}% {100 * worst:>8.2f}%")


if __name__ == "__main__":
    main()
