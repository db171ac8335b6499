"""Retro-hunt at archive speed: ``shoal match --flows`` over a generated archive of >= 50M flows.

The archive is written by the collector's own ``ParquetSink`` with its defaults (LZ4; ``--codec
zstd`` for a second archive), 64k-row row groups as the collector's batches, statistics on the
receipt time, ``date=/hour=`` folders, so it is what production writes; the flows are generated in
the flow schema: 48 hours of traffic between a network's own addresses (200k, Zipf-popular) and 2M
remote ones (Zipf-popular), 5% IPv6, a TCP/UDP port and size mix, and a pool of 10,000 "bad" remote
addresses that 0.5% of flows talk to. It is cached under ``.cache/`` (regenerated only when its
parameters change). Each case runs ``shoal match`` as a user does, a child process, and reports
wall, CPU (user + sys of the child, from ``wait4``), flows per CPU-second and peak RSS:

- start-up and the 100k-line list alone (a window no file holds: nothing is read);
- four 100,000-address lists: 1, 100 or all 10,000 of the bad addresses among random IPv4 (90%) and
  IPv6 addresses: few hits (most row groups hold no candidate), some (most row groups hold one or
  two) and many (0.5% of flows); and ``some:8080``, the 100 with every entry ``IP|8080``, whose
  addresses are in most row groups but on that port in few (the confirm step's case);
- no window, and a 6-hour ``--since/--until`` window that lets most files and row groups go unread;
- ``--compare REV``: the same cases run with the code of git revision REV, on the same archive in
  the same run (windows only if REV has ``--since``).

    .venv/bin/python -m benchmarks.bench_retro [--flows 50000000] [--compare REV] [--lists few,some,many,some:8080]
        [--codec zstd] [--repeat N]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.machine import machine_line
from pipeline.schemas import FLOW_SCHEMA
from pipeline.sinks.parquet import ParquetSink

ROOT = Path(__file__).resolve().parent.parent
T0_US = 1_796_083_200_000_000  # 2026-12-01T00:00:00Z
ROWS = 65536
BAD_POOL = 10_000
BAD_SHARE = 0.005
LISTS = {"few": (1, None), "some": (100, None), "many": (BAD_POOL, None), "some:8080": (100, 8080)}
"""name: (bad addresses among the 100,000, the port every entry names or None)."""
_TS = FLOW_SCHEMA.field("time_received").type


def _v4(values: np.ndarray) -> np.ndarray:
    raw = np.zeros((len(values), 16), np.uint8)
    raw[:, 10:12] = 0xFF
    raw[:, 12:] = values.astype(">u4").view(np.uint8).reshape(-1, 4)
    return raw


def _binary16(raw: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(pa.binary(16), len(raw), [None, pa.py_buffer(np.ascontiguousarray(raw))])


class Traffic:
    """Flow batches of a network's traffic, in receipt-time order."""

    def __init__(self, total: int, hours: int, seed: int = 1) -> None:
        self.total, self.span_us = total, hours * 3_600_000_000
        self.rng = rng = np.random.default_rng(seed)
        self.local4 = (0x8A000000 + rng.integers(0, 1 << 20, 200_000)).astype(np.uint32)  # 138.0.0.0/12
        self.remote4 = rng.integers(1 << 24, 0xDF000000, 2_000_000).astype(np.uint32)
        self.local6 = np.zeros((20_000, 16), np.uint8)
        self.local6[:, :4] = [0x20, 0x01, 0x0D, 0xB8]
        self.local6[:, 8:] = rng.integers(0, 256, (20_000, 8), dtype=np.uint8)
        self.remote6 = rng.integers(0, 256, (200_000, 16), dtype=np.uint8)
        self.remote6[:, 0] = 0x2A
        self.bad = rng.integers(0xE0000000 - (1 << 24), 0xE0000000, BAD_POOL).astype(np.uint32)  # apart
        self.as_of = rng.integers(1000, 65000, 1 << 16).astype(np.uint32)  # remote AS by /16

    def batch(self, first: int, n: int) -> pa.RecordBatch:
        rng = self.rng
        received = T0_US + (np.arange(first, first + n, dtype=np.int64) * self.span_us) // self.total
        end = received - rng.integers(0, 30_000_000, n)
        start = end - np.minimum(rng.exponential(8e6, n).astype(np.int64), 1_800_000_000)
        local = self.local4[np.minimum(rng.zipf(1.3, n), len(self.local4)) - 1]
        remote = self.remote4[np.minimum(rng.zipf(1.2, n), len(self.remote4)) - 1]
        bad = rng.random(n) < BAD_SHARE
        remote[bad] = self.bad[rng.integers(0, BAD_POOL, int(bad.sum()))]
        local_raw, remote_raw = _v4(local), _v4(remote)
        is_v6 = rng.random(n) < 0.05
        v6 = np.flatnonzero(is_v6)
        local_raw[v6] = self.local6[rng.integers(0, len(self.local6), len(v6))]
        remote_raw[v6] = self.remote6[np.minimum(rng.zipf(1.2, len(v6)), len(self.remote6)) - 1]
        out = rng.random(n) < 0.5  # initiated by the local side
        service = rng.choice(np.array([443, 80, 53, 22, 123, 993, 25, 8080], np.uint16), n,
                             p=[0.55, 0.15, 0.12, 0.04, 0.04, 0.04, 0.03, 0.03])  # fmt: skip
        ephemeral = rng.integers(1024, 65536, n).astype(np.uint16)
        proto = np.where(np.isin(service, [53, 123]), 17, 6).astype(np.uint8)
        packets = np.maximum(1, rng.lognormal(1.5, 1.5, n)).astype(np.uint64)
        octets = packets * rng.integers(40, 1500, n).astype(np.uint64)
        remote_as = self.as_of[remote >> 16]
        flags = rng.choice(np.array([0x1B, 0x1F, 0x02, 0x12, 0x10, 0x18, 0x11], np.uint16), n)
        cols = {
            "time_received": pa.array(received, pa.int64()).cast(_TS),
            "exporter": _binary16(_v4(0xC0000201 + rng.integers(0, 4, n).astype(np.uint32))),
            "exporter_port": pa.array(np.full(n, 2055, np.uint16)),
            "observation_domain": pa.array(np.zeros(n, np.uint32)),
            "flow_version": pa.array(np.full(n, 10, np.uint8)),
            "flow_start": pa.array(start, pa.int64()).cast(_TS),
            "flow_end": pa.array(end, pa.int64()).cast(_TS),
            "src_addr": _binary16(np.where(out[:, None], local_raw, remote_raw)),
            "dst_addr": _binary16(np.where(out[:, None], remote_raw, local_raw)),
            "next_hop": pa.nulls(n, pa.binary(16)),
            "src_port": pa.array(np.where(out, ephemeral, service)),
            "dst_port": pa.array(np.where(out, service, ephemeral)),
            "protocol": pa.array(proto),
            "tcp_flags": pa.array(np.where(proto == 6, flags, 0).astype(np.uint16)),
            "tos": pa.array(np.zeros(n, np.uint8)),
            "packets": pa.array(packets),
            "octets": pa.array(octets),
            "input_if": pa.array(np.where(out, 1, 2).astype(np.uint32)),
            "output_if": pa.array(np.where(out, 2, 1).astype(np.uint32)),
            "src_as": pa.array(np.where(out, 1103, remote_as).astype(np.uint32)),
            "dst_as": pa.array(np.where(out, remote_as, 1103).astype(np.uint32)),
            "src_mask": pa.array(np.full(n, 24, np.uint8)),
            "dst_mask": pa.array(np.full(n, 24, np.uint8)),
            "ip_version": pa.array(np.where(is_v6, 6, 4).astype(np.uint8)),
            "sampling_rate": pa.array(np.ones(n, np.uint32)),
        }
        return pa.RecordBatch.from_arrays([cols[f.name] for f in FLOW_SCHEMA], schema=FLOW_SCHEMA)


def archive(where: Path, total: int, hours: int, codec: str | None) -> tuple[Path, Traffic]:
    """The archive (written once and cached) and its traffic model (for the bad addresses). ``codec``
    None is the sink's default, what the collector writes."""
    traffic = Traffic(total, hours)
    settings = {} if codec is None else {"compression": codec}
    params = {
        "flows": total,
        "hours": hours,
        "version": 2,
        "codec": ParquetSink(where, **settings).compression,
    }
    marker = where / "params.json"
    if marker.exists() and json.loads(marker.read_text()) == params:
        return where, traffic
    shutil.rmtree(where, ignore_errors=True)
    sink = ParquetSink(
        where / "flows", roll_seconds=1e9, **settings
    )  # rolls on the hour (and 256 MB), as collected
    began = time.perf_counter()
    for first in range(0, total, ROWS):
        sink.write(traffic.batch(first, min(ROWS, total - first)))
    sink.close()
    marker.write_text(json.dumps(params))
    print(f"archive written in {time.perf_counter() - began:.0f} s", flush=True)
    return where, traffic


def address_list(path: Path, traffic: Traffic, seen: int, port: int | None = None) -> Path:
    """100,000 addresses, ``seen`` of them from the bad pool, the rest random (IPv4 and IPv6); with
    ``port``, every entry ``IP|port``."""
    rng = np.random.default_rng(7919 + seen)  # not the traffic's seed
    v4 = np.concatenate([traffic.bad[:seen], rng.integers(1 << 24, 0xDF000000, 90_000 - seen)])
    lines = [str(ipaddress.IPv4Address(int(v))) for v in v4]
    lines += [str(ipaddress.IPv6Address(bytes(b))) for b in rng.integers(0, 256, (10_000, 16), np.uint8)]
    if port is not None:
        lines = [f"{a}|{port}" for a in lines]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_match(tree: Path, args: list[str]) -> dict:
    """``shoal match`` from ``tree`` in a child process: its wall, CPU, peak RSS and summary lines."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "match", *args], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    stderr = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"shoal match failed in {tree}:\n{stderr}")
    scanned = re.search(r"(\d+) flows scanned, (\d+) hits", stderr)
    groups = re.search(r"(\d+) of (\d+) row groups", stderr)
    whole = re.search(r"(\d+) decoded whole", stderr)
    files = re.search(r"read (\d+) of (\d+) files", stderr)
    timing = re.search(r"scan ([\d.]+) s, ([\d.]+) CPU-s", stderr)
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss": usage.ru_maxrss * 1024,
        "flows": int(scanned.group(1)) if scanned else 0,
        "hits": int(scanned.group(2)) if scanned else 0,
        "groups": f"{groups.group(1)}/{groups.group(2)}" if groups else "-",
        "whole": whole.group(1) if whole else "-",
        "files": f"{files.group(1)}/{files.group(2)}" if files else "-",
        "scan": (float(timing.group(1)), float(timing.group(2))) if timing else None,
    }


def line(name: str, total: int, r: dict) -> str:
    scan = ""
    if r["scan"]:
        wall, cpu = r["scan"]
        rate = f" = {r['flows'] / cpu / 1e6:.1f}M flows read/CPU-s" if cpu else ""
        scan = f"; scan alone {wall:.2f} s wall, {cpu:.2f} CPU-s{rate}"
    return (
        f"{name:34s} {r['wall']:6.2f} s wall {r['cpu']:6.2f} CPU-s {total / r['cpu'] / 1e6:5.1f}M flows/CPU-s "
        f"{total / r['wall'] / 1e6:5.1f}M flows/s wall, peak RSS {r['rss'] / 2**20:5.0f} MiB, "
        f"{r['hits']:,} hits, {r['flows']:,} flows read, files {r['files']}, row groups {r['groups']} "
        f"({r['whole']} decoded whole){scan}"
    )


def decode_floor(files: list[Path]) -> str:
    """CPU per flow of pyarrow decoding alone (this process, one thread, a row group per call as the
    hunt reads), for the address columns a hunt reads of every row group, the 16 other columns an
    alert carries (read for row groups with a hit) and all 18: what any reader of this archive pays."""
    from detectors.matcher import FLOW_COLUMNS

    find = ["src_addr", "dst_addr"]
    out = []
    for name, columns in (("2 address columns", find), ("16 other alert columns", [c for c in FLOW_COLUMNS if c not in find]),
                          ("all 18", list(FLOW_COLUMNS))):  # fmt: skip
        usage, rows = resource.getrusage(resource.RUSAGE_SELF), 0
        for path in files:
            parquet = pq.ParquetFile(path)
            for group in range(parquet.metadata.num_row_groups):
                rows += parquet.read_row_group(group, columns=columns, use_threads=False).num_rows
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
        out.append(f"{name} {cpu / rows * 1e9:.0f} ns/flow")
    return f"pyarrow decode alone ({len(files)} files, read_row_group): " + ", ".join(out)


def _window(hours: int) -> tuple[str, str, int]:
    """An eighth of the archive's span, starting at five eighths of it (6 h of 48)."""
    start_h, length_h = hours * 5 // 8, max(1, hours // 8)

    def iso(h: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(T0_US // 1_000_000 + h * 3600))

    return iso(start_h), iso(start_h + length_h), length_h


def old_tree(rev: str) -> Path:
    """The code of git revision ``rev`` in a scratch directory."""
    scratch = Path(tempfile.mkdtemp(prefix="shoal-retro-old-"))
    listing = subprocess.run(["git", "archive", rev, "pipeline", "detectors", "schemas"],
                             cwd=ROOT, check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(scratch)], input=listing, check=True)
    return scratch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flows", type=int, default=50_000_000)
    parser.add_argument("--hours", type=int, default=48)
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache")
    parser.add_argument("--lists", default=",".join(LISTS))
    parser.add_argument("--compare", metavar="REV", help="also run git revision REV's shoal match")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--codec", help="the archive's compression (default: the collector's, ParquetSink's)")
    args = parser.parse_args()
    codec = args.codec or ParquetSink(ROOT).compression
    where, traffic = archive(
        args.cache / f"retro-archive-{args.flows}-{codec}", args.flows, args.hours, args.codec
    )
    flows = where / "flows"
    files = sorted(flows.rglob("*.parquet"))
    size = sum(f.stat().st_size for f in files)
    print(machine_line())
    print(f"archive: {args.flows:,} flows in {len(files)} files, {size / 2**30:.2f} GiB on disk "
          f"({size / args.flows:.1f} B/flow, {codec}), {args.hours} hours, {flows}")  # fmt: skip
    print(decode_floor(files[:8]), flush=True)
    window = _window(args.hours)
    print(f"window: --since {window[0]} --until {window[1]}")
    trees = [("new", ROOT)]
    if args.compare:
        trees.append((args.compare, old_tree(args.compare)))
    try:
        for _, tree in trees:  # compiled kernels cached (numba) before anything is timed
            run_match(tree, ["--intel", str(address_list(where / "list-warm.txt", traffic, 1)), "--flows",
                             str(files[0]), "--alerts", os.devnull])  # fmt: skip
        nothing = ["--since", "2100-01-01"]  # a window no file holds: start-up and the list alone
        few = address_list(where / "list-few.txt", traffic, *LISTS["few"])
        for _ in range(args.repeat):
            for label, tree in trees:
                r = run_match(
                    tree, ["--intel", str(few), "--flows", str(flows), "--alerts", os.devnull, *nothing]
                )
                print(fixed_line(f"start-up and 100k-line list, {label}", r), flush=True)
        for name in args.lists.split(","):
            intel = address_list(where / f"list-{name.replace(':', '-')}.txt", traffic, *LISTS[name])
            base = ["--intel", str(intel), "--flows", str(flows), "--alerts", os.devnull]
            for _ in range(args.repeat):
                for label, tree in trees:
                    r = run_match(tree, base)
                    print(line(f"{name}, {label}, whole archive", args.flows, r), flush=True)
                for label, tree in trees:
                    if not windows(tree):
                        continue
                    r = run_match(tree, [*base, "--since", window[0], "--until", window[1]])
                    print(line(f"{name}, {label}, {window[2]} h window", args.flows, r), flush=True)
    finally:
        for label, tree in trees:
            if label != "new":
                shutil.rmtree(tree, ignore_errors=True)


def windows(tree: Path) -> bool:
    """Whether the code in ``tree`` has ``--since`` (older code does not)."""
    return "--since" in (tree / "pipeline" / "commands" / "match.py").read_text()


def fixed_line(name: str, r: dict) -> str:
    return f"{name:34s} {r['wall']:6.2f} s wall {r['cpu']:6.2f} CPU-s, peak RSS {r['rss'] / 2**20:5.0f} MiB"


if __name__ == "__main__":
    main()
