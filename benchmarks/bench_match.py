"""Matcher throughput and index memory at growing indicator counts, with IPv4 and IPv6 traffic.

    .venv/bin/python -m benchmarks.bench_match [--sizes 1000,100000,1000000,10000000] [--flows 1000000]
        [--ipv6-share 0,0.1,0.3,0.5] [--v6-indicators 0.1] [--path auto|objects|columnar] [--tree DIR]
    mkdir /tmp/old && git archive main detectors | tar -x -C /tmp/old   # then --tree /tmp/old

Indicator sets mix IPv4/IPv6, exact addresses and CIDRs (the real CIDRs of MISP's vpn-ipv4 and
public-dns-v4 warninglists when ../shared/data is present), 10% with a destination port; a share
``--v6-indicators`` of them IPv6 (1 in 10 by default): mostly /128, some /64, /56, /48 and /32,
clustered ~200 to a random /32 of 2000::/3, as hosting providers' addresses are. Flows are random
IPv4 addresses, a share ``--ipv6-share`` of them IPv6 instead (half random in 2000::/3, half in the
/48 of a random IPv6 indicator), with ~1% aimed at indicators. A lookup is one address (src and dst
count as two). Per IPv6 share: the address stage alone and ``Matcher.find``; the cost of an IPv6
address is derived from the IPv4-only run and the mixed one.

The index is built from Python ``Indicator`` objects up to 1M indicators (``--path objects``: ~1 KB
each) and from Arrow rows (``IndicatorTable``, as lists and CSV feeds load) above (``columnar``), so
10M fits in a few GiB. ``--tree DIR`` measures another checkout's ``detectors`` package (e.g. main's,
extracted with ``git archive``) on the same sets.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import mmap
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "misp-warninglists"
V6_PREFIXES = (128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 64, 64, 56, 48, 48, 32)
"""IPv6 indicators' prefix lengths, in turn: 70% /128, 10% /64, 5% /56, 10% /48, 5% /32."""
PER_SLASH32 = 200  # IPv6 indicators per /32 on average


def real_cidrs() -> list[str]:
    out: list[str] = []
    for name in ("vpn-ipv4", "public-dns-v4"):
        path = SHARED / name / "list.json"
        if path.exists():
            out += [v for v in json.loads(path.read_text())["list"] if "/" in v]
    return out


class IndicatorSet:
    """The indicators as arrays: network bytes (IPv4 mapped, host bits cleared), prefix, version,
    destination port (-1 none). Random draws made whole up front: per-item generator calls made
    10M objects take ~5 minutes."""

    def __init__(self, n: int, v6_share: float, rng: np.random.Generator) -> None:
        cidrs = real_cidrs()[: n // 10]
        m = n - len(cidrs)
        v4 = rng.integers(1 << 24, 224 << 24, n, dtype=np.uint64)[:m]  # as drawn before IPv6 traffic
        v6 = rng.integers(0, 1 << 62, n, dtype=np.int64).astype(np.uint64)[:m]
        prefix4 = rng.integers(24, 31, n)[:m]
        port = rng.integers(1, 65535, n)[:m]
        i = np.arange(m)
        is_v6 = np.floor((i + 1) * v6_share) > np.floor(i * v6_share)  # 0.1: i % 10 == 9, as before
        n6 = int(is_v6.sum())
        slash32 = rng.integers(0x2000 << 16, 0x4000 << 16, max(n6 // PER_SLASH32, 1), dtype=np.uint64)
        prefix6 = np.array(V6_PREFIXES)[(np.cumsum(is_v6) - 1) % len(V6_PREFIXES)]
        own = rng.integers(0x2000 << 16, 0x4000 << 16, m, dtype=np.uint64)  # a /32 indicator: its own /32
        cluster = np.where(prefix6 > 32, slash32[rng.integers(0, len(slash32), m)], own)
        hi = (cluster << np.uint64(32)) | (v6 >> np.uint64(30))
        lo = rng.integers(0, 1 << 63, m, dtype=np.uint64) << np.uint64(1)
        host = 128 - prefix6
        hi &= ~_low_bits((host - 64).clip(0))
        lo &= ~_low_bits(host.clip(0, 64))
        prefix4 = np.where(i % 7 == 0, prefix4, 32)
        first4 = v4 & ~_low_bits(32 - prefix4)
        self.network = np.zeros((n, 16), np.uint8)
        words = np.zeros((m, 2), ">u8")
        words[:, 0], words[:, 1] = np.where(is_v6, hi, 0), np.where(is_v6, lo, (0xFFFF << 32) | first4)
        self.network[:m] = words.view(np.uint8).reshape(m, 16)
        self.prefix = np.r_[np.where(is_v6, prefix6, prefix4), np.zeros(len(cidrs), np.int64)]
        self.version = np.r_[np.where(is_v6, 6, 4), np.full(len(cidrs), 4)]
        self.port = np.r_[np.where(i % 10 == 3, port, -1), np.full(len(cidrs), -1)]
        for k, text in enumerate(cidrs):
            net = ipaddress.IPv4Network(text, strict=False)
            self.network[m + k, 10:] = np.frombuffer(b"\xff\xff" + net.network_address.packed, np.uint8)
            self.prefix[m + k] = net.prefixlen
        self.real = len(cidrs)

    def __len__(self) -> int:
        return len(self.prefix)

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        raw = self.network.tobytes()
        out = []
        for k, (prefix, version) in enumerate(zip(self.prefix.tolist(), self.version.tolist(), strict=True)):
            if version == 4:
                out.append(ipaddress.IPv4Network((raw[16 * k + 12 : 16 * k + 16], prefix)))
            else:
                out.append(ipaddress.IPv6Network((raw[16 * k : 16 * k + 16], prefix)))
        return out

    def objects(self) -> list:
        """As Python ``Indicator`` objects (~1 KB each)."""
        from pipeline.intel.model import Condition, Indicator

        out = []
        for k, (net, port) in enumerate(zip(self.networks(), self.port.tolist(), strict=True)):
            ports = frozenset({port}) if port >= 0 else None
            ident = f"i{k}" if k < len(self) - self.real else f"c{k}"
            out.append(Indicator(ident, _text(net), "bench", (Condition(network=net, dst_ports=ports),)))
        return out

    def table(self):
        """As Arrow rows (``IndicatorTable``), no object per indicator; values are the row numbers, ids
        ``i`` + value."""
        from pipeline.intel.table import IndicatorTable

        values = pa.array(np.arange(len(self))).cast(pa.string())
        return IndicatorTable.from_columns(self.network, self.prefix, self.version, self.port, values=values,
                                           source="bench", id_prefix="i")  # fmt: skip


def _text(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """str() of an IPv6Network costs ~0.2 ms: its text written out by hand."""
    if net.version == 4:
        return str(net)
    digits = f"{int(net.network_address):032x}"
    return ":".join(digits[k : k + 4] for k in range(0, 32, 4)) + f"/{net.prefixlen}"


def _low_bits(bits: np.ndarray) -> np.ndarray:
    shifted = np.left_shift(np.uint64(1), np.minimum(bits, 63).astype(np.uint64)) - np.uint64(1)
    return np.where(bits >= 64, np.uint64(2**64 - 1), shifted)


def flows(n: int, inds: IndicatorSet, ipv6_share: float, rng: np.random.Generator) -> pa.RecordBatch:
    """``n`` flows: random IPv4 addresses, ``ipv6_share`` of them IPv6 (half random in 2000::/3, half
    in the /48 of a random IPv6 indicator), ~1% of all aimed at indicators' network addresses."""
    from pipeline.schemas import FLOW_SCHEMA

    addrs = np.zeros((2 * n, 16), dtype=np.uint8)
    addrs[:, 10:12] = 0xFF
    addrs[:, 12:] = rng.integers(0, 256, (2 * n, 4), dtype=np.uint8)
    v6_rows = np.flatnonzero(rng.random(2 * n) < ipv6_share) if ipv6_share else np.empty(0, np.int64)
    v6_inds = np.flatnonzero(inds.version == 6)
    if len(v6_rows):
        words = np.empty((len(v6_rows), 2), ">u8")
        words[:, 0] = rng.integers(0, 1 << 61, len(v6_rows), dtype=np.uint64) | np.uint64(1 << 61)
        words[:, 1] = rng.integers(0, 1 << 63, len(v6_rows), dtype=np.uint64) << np.uint64(1)
        near = rng.random(len(v6_rows)) < 0.5 if len(v6_inds) else np.zeros(len(v6_rows), bool)
        base = np.ascontiguousarray(inds.network[rng.choice(v6_inds, int(near.sum()))]).view(">u8")
        if len(base):
            words[near, 0] = (base[:, 0] & np.uint64(~0xFFFF & (2**64 - 1))) | (
                words[near, 0] & np.uint64(0xFFFF)
            )
        addrs[v6_rows] = words.view(np.uint8).reshape(-1, 16)
    hot = rng.choice(2 * n, 2 * n // 100, replace=False)
    addrs[hot] = inds.network[rng.choice(len(inds), len(hot))]
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


def median_cpu(run, repeat: int) -> tuple[float, float, float]:
    """(median, min, max) CPU-seconds of ``run()`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        c0 = time.process_time()
        run()
        times.append(time.process_time() - c0)
    return statistics.median(times), min(times), max(times)


def measure(size: int, args: argparse.Namespace, rng: np.random.Generator) -> None:
    from detectors.addresses import Addresses
    from detectors.index import IndicatorIndex
    from detectors.intervals import resident_bytes
    from detectors.matcher import Matcher

    columnar = args.path == "columnar" or (args.path == "auto" and size > 1_000_000)
    before = rss()
    t0 = time.perf_counter()
    inds = IndicatorSet(size, args.v6_indicators, rng)
    source = inds.table() if columnar else inds.objects()
    made, objects = time.perf_counter() - t0, (rss() - before) / size
    t0, c0 = time.perf_counter(), time.process_time()
    index = IndicatorIndex.build(table=source) if columnar else IndicatorIndex.build(source)
    build, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    del source
    level1 = index.table.v4.level1  # pages written by the build; reads later map the zero page
    resident = (resident_bytes(level1) or 0) if level1 is not None else 0
    fixed = index.fixed_nbytes()
    shared = index.nbytes(fixed=False) - index.table.nbytes(fixed=False)
    n6 = int((inds.version == 6).sum())
    n4 = size - n6
    v4 = index.table.v4.nbytes(fixed=False) / max(n4, 1) + shared / size
    v6 = index.table.v6.nbytes() / max(n6, 1) + shared / size
    per = index.nbytes(fixed=False) / size
    print(f"{size:>10,} indicators ({'columnar' if columnar else 'objects'}): made in {made:5.1f} s "
          f"(~{objects:.0f} B each RSS), build {build:5.1f} s ({build_cpu:.1f} CPU-s)\n"
          f"{'':24}index {index.nbytes() / 2**20:7.1f} MiB = {fixed / 2**20:.0f} MiB fixed "
          f"({resident / 2**20:.0f} MiB touched) + {per:.1f} B/indicator "
          f"(IPv4 {v4:.1f} B, IPv6 {v6:.1f} B; {n4:,} + {n6:,} networks); "
          f"alert attributes {index.attributes.nbytes / size:.0f} B/indicator", flush=True)  # fmt: skip
    matcher = Matcher(index)
    lookups = 2 * args.flows
    stage4 = None
    for share in (float(s) for s in args.ipv6_share.split(",")):
        batch = flows(args.flows, inds, share, rng)
        matcher.match(batch.slice(0, 10_000))  # compiles the lookup kernels (cached on disk after)
        columns = [Addresses.from_column(batch.column(c)) for c in ("src_addr", "dst_addr")]
        v6_addresses = sum(int((~a.is_v4).sum()) for a in columns)
        hits = matcher.alerts(batch, matcher.find(batch)).num_rows
        find, find_min, find_max = median_cpu(lambda b=batch: matcher.find(b), args.repeat)
        whole, _, _ = median_cpu(lambda b=batch: matcher.match(b), args.repeat)

        def stage(b=batch) -> None:  # the address stage alone: both columns through the index
            for column in ("src_addr", "dst_addr"):
                index.table.lookup(Addresses.from_column(b.column(column)))

        lookup, _, _ = median_cpu(stage, args.repeat)
        derived = ""
        if share == 0:
            stage4 = lookup / lookups
        elif stage4 is not None and v6_addresses:
            per6 = (lookup - stage4 * (lookups - v6_addresses)) / v6_addresses
            derived = f"; {per6 * 1e9:.0f} ns per IPv6 address vs {stage4 * 1e9:.0f} ns per IPv4 ({per6 / stage4:.1f}x)"
        print(f"{'':24}IPv6 {share:4.0%} of addresses ({v6_addresses:,}): address stage "
              f"{lookups / lookup / 1e6:6.1f} M lookups/s ({lookup:.3f} CPU-s){derived}\n"
              f"{'':30}find {lookups / find / 1e6:6.1f} M/s (median of {args.repeat}, min "
              f"{lookups / find_max / 1e6:.1f}, max {lookups / find_min / 1e6:.1f}; {hits:,} hits, {find:.3f} CPU-s); "
              f"with the alert table {lookups / whole / 1e6:.1f} M/s ({whole:.3f} CPU-s)", flush=True)  # fmt: skip
        del batch, columns


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,100000,1000000,10000000")
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="match runs per size (median reported)")
    parser.add_argument(
        "--ipv6-share", default="0", help="fractions of flow addresses that are IPv6, comma-separated"
    )
    parser.add_argument(
        "--v6-indicators", type=float, default=0.1, help="fraction of indicators that are IPv6"
    )
    parser.add_argument("--path", choices=("auto", "objects", "columnar"), default="auto",
                        help="build from objects or Arrow rows (auto: objects up to 1M)")  # fmt: skip
    parser.add_argument("--tree", help="directory holding the detectors package to measure")
    args = parser.parse_args()
    if args.tree:
        sys.path.insert(0, str(Path(args.tree).resolve()))
    from benchmarks.machine import machine_line
    from pipeline.allocator import tune_allocator

    rng = np.random.default_rng(3)
    tune_allocator()
    print(machine_line())
    import detectors

    print(f"detectors from {Path(detectors.__file__).parent}; IPv6 indicators {args.v6_indicators:.0%}")
    for size in (int(s) for s in args.sizes.split(",")):
        measure(size, args, rng)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak:.1f} GiB")


if __name__ == "__main__":
    main()
