"""Matcher throughput and index memory at growing indicator counts.

    .venv/bin/python -m benchmarks.bench_match [--sizes 1000,100000,1000000] [--flows 1000000]

Indicator sets mix IPv4/IPv6, exact addresses and CIDRs (the real CIDRs of MISP's vpn-ipv4 and
public-dns-v4 warninglists when ../shared/data is present), 10% with a destination port. Flows are
random addresses with ~1% aimed at indicators. A lookup is one address (src and dst count as two).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.machine import machine_line
from detectors.index import IndicatorIndex
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
    v4 = rng.integers(1 << 24, 224 << 24, n, dtype=np.uint64)
    out = []
    for i in range(n - len(cidrs)):
        if i % 10 == 9:  # IPv6
            net = ipaddress.IPv6Network(
                (0x20010DB8 << 96 | int(rng.integers(0, 1 << 62)) << 32, 128 if i % 20 else 48), strict=False
            )
        elif i % 7 == 0:
            net = ipaddress.IPv4Network((int(v4[i]), int(rng.integers(24, 31))), strict=False)
        else:
            net = ipaddress.IPv4Network(int(v4[i]))
        ports = frozenset({int(rng.integers(1, 65535))}) if i % 10 == 3 else None
        out.append(Indicator(f"i{i}", str(net), "bench", (Condition(network=net, dst_ports=ports),)))
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--flows", type=int, default=1_000_000)
    args = parser.parse_args()
    rng = np.random.default_rng(3)
    tune_allocator()
    print(machine_line())
    for size in (int(s) for s in args.sizes.split(",")):
        inds = indicators(size, rng)
        t0 = time.perf_counter()
        index = IndicatorIndex.build(inds)
        build = time.perf_counter() - t0
        batch = flows(args.flows, inds, rng)
        matcher = Matcher(index)
        matcher.match(batch.slice(0, 10_000))
        c0 = time.process_time()
        hits = matcher.match(batch).num_rows
        cpu = time.process_time() - c0
        fixed = index.table.v4.slash24.nbytes + index.allow.v4.slash24.nbytes
        per = (index.nbytes() - fixed) / max(len(inds), 1)
        print(f"{size:>10,} indicators: build {build:6.1f} s, {2 * args.flows / cpu / 1e6:6.1f} M lookups/s per core "
              f"({args.flows:,} flows, {hits:,} hits, {cpu:.2f} CPU-s), index {index.nbytes() / 2**20:7.1f} MiB "
              f"= {fixed / 2**20:.0f} MiB fixed + {per:.0f} B/indicator")  # fmt: skip


if __name__ == "__main__":
    main()
