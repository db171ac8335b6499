"""Matcher throughput and index memory at growing indicator counts.

    .venv/bin/python -m benchmarks.bench_match [--sizes 1000,100000,1000000,10000000] [--flows 1000000]

Indicator sets mix IPv4/IPv6, exact addresses and CIDRs (the real CIDRs of MISP's vpn-ipv4 and
public-dns-v4 warninglists when ../shared/data is present), 10% with a destination port. Flows are
random addresses with ~1% aimed at indicators. A lookup is one address (src and dst count as two).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import mmap
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.machine import machine_line
from detectors.addresses import Addresses
from detectors.index import IndicatorIndex
from detectors.intervals import resident_bytes
from detectors.matcher import Matcher
from pipeline.allocator import tune_allocator
from pipeline.intel.model import Condition, Indicator
from pipeline.schemas import FLOW_SCHEMA

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "misp-warninglists"


def real_cidrs() -> list[str]:
    out: list[str] = []
    for name in ("vpn-ipv4", "public-dns-v4"):
        path = SHARED / name / "list.json"
        if path.exists():
            out += [v for v in json.loads(path.read_text())["list"] if "/" in v]
    return out


def indicators(n: int, rng: np.random.Generator) -> list[Indicator]:
    cidrs = real_cidrs()[: n // 10]
    # Random draws made whole up front: per-item generator calls made 10M objects take ~5 minutes.
    v4 = rng.integers(1 << 24, 224 << 24, n, dtype=np.uint64).tolist()
    v6 = rng.integers(0, 1 << 62, n, dtype=np.int64).tolist()
    prefix = rng.integers(24, 31, n).tolist()
    port = rng.integers(1, 65535, n).tolist()
    out = []
    for i in range(n - len(cidrs)):
        if i % 10 == 9:  # IPv6; text written out by hand (str() of an IPv6Network costs ~0.2 ms here)
            net = ipaddress.IPv6Network((0x20010DB8 << 96 | v6[i] << 32, 128 if i % 20 else 48), strict=False)
            digits = f"{int(net.network_address):032x}"
            text = ":".join(digits[k : k + 4] for k in range(0, 32, 4)) + f"/{net.prefixlen}"
        else:
            net = (
                ipaddress.IPv4Network((v4[i], prefix[i]), strict=False)
                if i % 7 == 0
                else ipaddress.IPv4Network(v4[i])
            )
            text = str(net)
        ports = frozenset({port[i]}) if i % 10 == 3 else None
        out.append(Indicator(f"i{i}", text, "bench", (Condition(network=net, dst_ports=ports),)))
    out += [
        Indicator(f"c{i}", c, "bench", (Condition(network=ipaddress.ip_network(c, strict=False)),))
        for i, c in enumerate(cidrs)
    ]
    return out


def flows(n: int, inds: list[Indicator], rng: np.random.Generator) -> pa.RecordBatch:
    addrs = np.zeros((2 * n, 16), dtype=np.uint8)
    addrs[:, 10:12] = 0xFF
    addrs[:, 12:] = rng.integers(0, 256, (2 * n, 4), dtype=np.uint8)
    hot = rng.choice(2 * n, 2 * n // 100, replace=False)
    for row, ind in zip(hot, rng.choice(len(inds), len(hot)), strict=False):
        net = inds[ind].conditions[0].network
        raw = net.network_address.packed
        addrs[row] = np.frombuffer(raw if len(raw) == 16 else bytes(10) + b"\xff\xff" + raw, dtype=np.uint8)
    src, dst = addrs[:n], addrs[n:]
    cols = {f.name: pa.nulls(n, f.type) if f.nullable else pa.array(np.zeros(n, dtype=f.type.to_pandas_dtype()) if pa.types.is_integer(f.type) else [b"\0" * 16] * n if f.type == pa.binary(16) else np.zeros(n, dtype="datetime64[us]"), type=f.type) for f in FLOW_SCHEMA}  # fmt: skip
    cols["src_addr"] = pa.Array.from_buffers(
        pa.binary(16), n, [None, pa.py_buffer(np.ascontiguousarray(src))]
    )
    cols["dst_addr"] = pa.Array.from_buffers(
        pa.binary(16), n, [None, pa.py_buffer(np.ascontiguousarray(dst))]
    )
    cols["dst_port"] = pa.array(rng.integers(0, 65535, n, dtype=np.uint16))
    cols["time_received"] = pa.array(
        np.full(n, 1_790_000_000_000_000, dtype="datetime64[us]"),
        type=FLOW_SCHEMA.field("time_received").type,
    )
    return pa.RecordBatch.from_arrays([cols[f.name] for f in FLOW_SCHEMA], schema=FLOW_SCHEMA)


def rss() -> int:
    """Resident bytes of this process now."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * mmap.PAGESIZE


def per_family(inds: list[Indicator]) -> tuple[int, int]:
    """(IPv4, IPv6) networks among the indicators' conditions."""
    versions = np.fromiter((c.network.version for i in inds for c in i.conditions if c.network), np.int8)
    return int((versions == 4).sum()), int((versions == 6).sum())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,100000,1000000,10000000")
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="match runs per size (median reported)")
    args = parser.parse_args()
    rng = np.random.default_rng(3)
    tune_allocator()
    print(machine_line())
    for size in (int(s) for s in args.sizes.split(",")):
        before = rss()
        t0 = time.perf_counter()
        inds = indicators(size, rng)
        made, objects = time.perf_counter() - t0, (rss() - before) / size
        t0, c0 = time.perf_counter(), time.process_time()
        index = IndicatorIndex.build(inds)
        build, build_cpu = time.perf_counter() - t0, time.process_time() - c0
        level1 = index.table.v4.level1  # pages written by the build; reads later map the zero page
        resident = (resident_bytes(level1) or 0) if level1 is not None else 0
        batch = flows(args.flows, inds, rng)
        matcher = Matcher(index)
        matcher.match(batch.slice(0, 10_000))  # compiles the lookup kernels (cached on disk after)
        finds, wholes, hits = [], [], 0
        for _ in range(args.repeat):
            c0 = time.process_time()
            found = matcher.find(batch)
            c1 = time.process_time()
            hits = matcher.alerts(batch, found).num_rows
            finds.append(c1 - c0)
            wholes.append(time.process_time() - c0)
        cpu, whole = statistics.median(finds), statistics.median(wholes)
        stage = []  # the address stage alone: both columns through the index, no constraints or alerts
        for _ in range(args.repeat):
            c0 = time.process_time()
            for column in ("src_addr", "dst_addr"):
                index.table.lookup(Addresses.from_column(batch.column(column)))
            stage.append(time.process_time() - c0)
        lookup_cpu = statistics.median(stage)
        fixed = index.fixed_nbytes()
        shared = index.nbytes(fixed=False) - index.table.nbytes(fixed=False)
        n4, n6 = per_family(inds)
        v4 = index.table.v4.nbytes(fixed=False) / max(n4, 1) + shared / size
        v6 = index.table.v6.nbytes() / max(n6, 1) + shared / size
        per = index.nbytes(fixed=False) / size
        print(f"{size:>10,} indicators: objects {made:5.1f} s (~{objects:.0f} B each RSS), "
              f"build {build:5.1f} s ({build_cpu:.1f} CPU-s)\n"
              f"{'':24}{2 * args.flows / cpu / 1e6:6.1f} M lookups/s per core "
              f"(find, median of {len(finds)}: {args.flows:,} flows, {hits:,} hits, {cpu:.3f} CPU-s; "
              f"min {2 * args.flows / max(finds) / 1e6:.1f}, max {2 * args.flows / min(finds) / 1e6:.1f}); "
              f"address stage alone {2 * args.flows / lookup_cpu / 1e6:.1f} M/s ({lookup_cpu:.3f} CPU-s)\n"
              f"{'':24}{2 * args.flows / whole / 1e6:6.1f} M lookups/s per core with the alert table "
              f"({whole:.3f} CPU-s; the table alone {(whole - cpu) * 1e3:.0f} ms, "
              f"{(whole - cpu) / max(hits, 1) * 1e9:.0f} ns per alert row)\n"
              f"{'':24}index {index.nbytes() / 2**20:7.1f} MiB = {fixed / 2**20:.0f} MiB fixed "
              f"({resident / 2**20:.0f} MiB touched) + {per:.1f} B/indicator "
              f"(IPv4 {v4:.1f} B, IPv6 {v6:.1f} B; {n4:,} + {n6:,} networks); "
              f"alert attributes {index.attributes.nbytes / size:.0f} B/indicator")  # fmt: skip
        del inds, index, matcher, batch
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak:.1f} GiB")


if __name__ == "__main__":
    main()
