"""Collector benchmark: one identical export stream replayed on loopback into ``shoal collect``
(Parquet), nfcapd (nfdump) writing LZ4-compressed files (``-y``), nfcapd writing plain files and
goflow2, one after the other in the same run.

The default stream is issue 14's harness: IPFIX only, 4.5M flows cycled from 30k distinct flows with
a backbone-like spread (addresses over a /15 per side, mixed ports, protocols, counters and times).
``--stream v9+ipfix`` replays the earlier NetFlow v9 + IPFIX pair (254 addresses per side, fixed
times), whose figures fill the older runs in benchmarks/README.md.

Reports, per collector: flows sent, flows kept, drop rate, CPU-seconds of the collector's whole
process tree (user+sys, from wait4/rusage at exit minus what it had used once idle after start-up,
shown split), flows kept per CPU-second and ratios to Shoal, and the bytes per flow each wrote:
writing costs sys time in the page cache, which on some VMs grows sharply once fresh memory is
touched (benchmarks/README.md). The sender uses pre-built packets and ``sendmmsg``, paced to
``--rate`` flows/s so drops are measured at a known offered load.

    .venv/bin/python -m benchmarks.bench_collect [--flows 4500000] [--rate 1500000]
    .venv/bin/python -m benchmarks.bench_collect --shoal-compression ,zstd:1,lz4 --skip goflow2

goflow2 is built once with ``go install`` from the Go module proxy into ``.cache/goflow2`` (not
committed); pass ``--goflow2 PATH`` to use another binary or ``--skip goflow2``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import functools
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_line

ROOT = Path(__file__).resolve().parent.parent
GOFLOW2_VERSION = "v2.2.3"
CLK_TCK = os.sysconf("SC_CLK_TCK")
EPOCH = 1_790_000_000

# ---------------------------------------------------------------------------------------------------
# Packets (built with struct/numpy: the benchmark is not a correctness oracle, the tests are).

V9_FIELDS = [
    (8, 4),
    (12, 4),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 1),
    (5, 1),
    (2, 4),
    (1, 4),
    (10, 4),
    (14, 4),
    (22, 4),
    (21, 4),
]
IPFIX_FIELDS = [
    (8, 4),
    (12, 4),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 1),
    (5, 1),
    (2, 4),
    (1, 4),
    (10, 4),
    (14, 4),
    (152, 8),
    (153, 8),
]


def _records(rng: np.random.Generator, n: int, fields: list[tuple[int, int]], now_ms: int) -> bytes:
    dtype = np.dtype([(f"f{t}", {1: ">u1", 2: ">u2", 4: ">u4", 8: ">u8"}[n]) for t, n in fields])
    rec = np.zeros(n, dtype=dtype)
    rec["f8"] = 0xC6336400 + rng.integers(1, 255, n)  # 198.51.100.x
    rec["f12"] = 0xCB007100 + rng.integers(1, 255, n)  # 203.0.113.x
    rec["f7"] = rng.integers(1024, 65535, n)
    rec["f11"] = rng.choice([53, 80, 443, 123, 22], n)
    rec["f4"] = rng.choice([6, 17], n)
    rec["f6"] = 0x1B
    rec["f2"] = rng.integers(1, 1000, n)
    rec["f1"] = rec["f2"] * rng.integers(40, 1500, n)
    rec["f10"], rec["f14"] = rng.integers(1, 64, n), rng.integers(1, 64, n)
    if "f152" in dtype.names:
        rec["f152"], rec["f153"] = now_ms - 5000, now_ms - 1000
    else:
        rec["f22"], rec["f21"] = 3_595_000, 3_599_000
    return rec.tobytes()


def _template(version: int, template_id: int, fields: list[tuple[int, int]]) -> bytes:
    body = struct.pack("!HH", template_id, len(fields)) + b"".join(
        struct.pack("!HH", t, n) for t, n in fields
    )
    set_id = 2 if version == 10 else 0
    return struct.pack("!HH", set_id, 4 + len(body)) + body


def build_stream(n_packets: int, seed: int = 7) -> tuple[list[bytes], list[bytes], int]:
    """(v9 packets, IPFIX packets, flows per packet pair); a template set leads every 20th packet."""
    rng = np.random.default_rng(seed)
    v9, ipfix = [], []
    v9_per, ipfix_per = 35, 29
    v9_tmpl, ipfix_tmpl = _template(9, 256, V9_FIELDS), _template(10, 257, IPFIX_FIELDS)
    for i in range(n_packets):
        data = _records(rng, v9_per, V9_FIELDS, EPOCH * 1000)
        dset = struct.pack("!HH", 256, 4 + len(data)) + data
        sets = (v9_tmpl if i % 20 == 0 else b"") + dset
        count = v9_per + (1 if i % 20 == 0 else 0)
        v9.append(struct.pack("!HHIIII", 9, count, 3_600_000, EPOCH, i, 1) + sets)
        data = _records(rng, ipfix_per, IPFIX_FIELDS, EPOCH * 1000)
        dset = struct.pack("!HH", 257, 4 + len(data)) + data
        sets = (ipfix_tmpl if i % 20 == 0 else b"") + dset
        ipfix.append(struct.pack("!HHIII", 10, 16 + len(sets), EPOCH, i * ipfix_per, 2) + sets)
    return v9, ipfix, v9_per + ipfix_per


def _spread_records(rng: np.random.Generator, n: int, now_ms: int) -> bytes:
    """``n`` IPFIX records (``IPFIX_FIELDS``) with a backbone-like spread: addresses drawn from the
    benchmarking /15 (198.18.0.0/15, 131k hosts per side), any ports, TCP/UDP/ICMP, heavy-tailed
    counters, start times over the last minute and durations up to a minute."""
    dtype = np.dtype([(f"f{t}", {1: ">u1", 2: ">u2", 4: ">u4", 8: ">u8"}[w]) for t, w in IPFIX_FIELDS])
    rec = np.zeros(n, dtype=dtype)
    rec["f8"] = 0xC6120000 + rng.integers(0, 1 << 17, n)
    rec["f12"] = 0xC6120000 + rng.integers(0, 1 << 17, n)
    rec["f4"] = rng.choice([6, 17, 1], n, p=[0.7, 0.27, 0.03])
    well_known = rng.choice([53, 80, 443, 123, 22, 25, 993, 3389], n)
    rec["f7"] = rng.integers(1024, 65535, n)
    rec["f11"] = np.where(rng.random(n) < 0.8, well_known, rng.integers(1, 65535, n))
    rec["f6"] = np.where(rec["f4"] == 6, rng.choice([0x02, 0x12, 0x1B, 0x11, 0x04], n), 0)
    rec["f5"] = rng.choice([0, 0, 0, 0x20, 0xB8], n)
    rec["f2"] = np.minimum(rng.pareto(1.2, n) * 2 + 1, 1_000_000).astype(np.uint64)
    rec["f1"] = rec["f2"] * rng.integers(40, 1500, n)
    rec["f10"], rec["f14"] = rng.integers(1, 64, n), rng.integers(1, 64, n)
    start = now_ms - rng.integers(0, 60_000, n)
    rec["f152"], rec["f153"] = start, start + rng.integers(0, 60_000, n)
    return rec.tobytes()


def build_ipfix_stream(distinct_flows: int, seed: int = 7) -> tuple[list[bytes], int]:
    """(IPFIX packets of 29 ``_spread_records`` each, flows per packet): ``distinct_flows`` different
    flows, cycled by the sender; a template set leads every 20th packet (the issue 14 harness' mix:
    IPFIX only, a few tens of thousands of distinct flows)."""
    rng = np.random.default_rng(seed)
    per = 29
    tmpl = _template(10, 257, IPFIX_FIELDS)
    packets = []
    for i in range(max(1, -(-distinct_flows // per))):
        data = _spread_records(rng, per, EPOCH * 1000)
        sets = (tmpl if i % 20 == 0 else b"") + struct.pack("!HH", 257, 4 + len(data)) + data
        packets.append(struct.pack("!HHIII", 10, 16 + len(sets), EPOCH, i * per, 3) + sets)
    return packets, per


# ---------------------------------------------------------------------------------------------------
# Sender: sendmmsg over pre-built iovecs, paced.

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_IoVec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


class Sender:
    """Cycles through ``packets`` with sendmmsg from one connected UDP socket."""

    def __init__(self, packets: list[bytes], target: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.sock.connect(target)
        self._bufs = [ctypes.create_string_buffer(p, len(p)) for p in packets]
        n = len(packets)
        self._iov = (_IoVec * n)()
        self._msgs = (_MMsgHdr * n)()
        for i, b in enumerate(self._bufs):
            self._iov[i].base, self._iov[i].len = ctypes.addressof(b), len(packets[i])
            self._msgs[i].hdr.iov = ctypes.pointer(self._iov[i])
            self._msgs[i].hdr.iovlen = 1
        self.n = n
        self.pos = 0

    def send(self, count: int) -> int:
        """Send ``count`` packets (blocking socket: the kernel paces when the send buffer fills)."""
        sent = 0
        while sent < count:
            chunk = min(count - sent, self.n - self.pos, 256)
            base = ctypes.byref(self._msgs, self.pos * ctypes.sizeof(_MMsgHdr))
            r = _libc.sendmmsg(self.sock.fileno(), base, chunk, 0)
            if r < 0:
                err = ctypes.get_errno()
                if err in (11, 105, 111, 4):  # EAGAIN, ENOBUFS, ECONNREFUSED, EINTR
                    time.sleep(0.0005)
                    continue
                raise OSError(err, os.strerror(err))
            sent += r
            self.pos = (self.pos + r) % self.n
        return sent


def replay(
    v9: list[bytes], ipfix: list[bytes], port: int, pairs: int, rate_flows: float, per_pair: int
) -> float:
    """Send ``pairs`` (v9, IPFIX) packet pairs paced to ``rate_flows``; return seconds taken."""
    return replay_streams([v9, ipfix], port, pairs, rate_flows, per_pair)


def replay_streams(
    exporters: list[list[bytes]], port: int, rounds: int, rate_flows: float, per_round: int
) -> float:
    """Send ``rounds`` rounds of one packet from each exporter's list (each from its own socket),
    ``per_round`` flows a round, paced to ``rate_flows``; return seconds taken."""
    senders = [Sender(packets, ("127.0.0.1", port)) for packets in exporters]
    chunk = 32
    interval = chunk * per_round / rate_flows
    start = time.perf_counter()
    done = 0
    while done < rounds:
        n = min(chunk, rounds - done)
        for sender in senders:
            sender.send(n)
        done += n
        ahead = start + (done / chunk) * interval - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
    took = time.perf_counter() - start
    for sender in senders:
        sender.sock.close()
    return took


# ---------------------------------------------------------------------------------------------------
# Process-tree CPU and kernel drops.


def tree_pids(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def tree_cpu_split(pid: int) -> tuple[float, float]:
    """(user, sys) CPU-seconds of the process tree so far."""
    user = system = 0.0
    for p in tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        user += (utime + cutime) / CLK_TCK
        system += (stime + cstime) / CLK_TCK
    return user, system


def tree_cpu(pid: int) -> float:
    return sum(tree_cpu_split(pid))


def output_bytes(path: Path) -> int:
    """Bytes a collector wrote (a file, or every file under a directory)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def udp_drops(port: int) -> int:
    drops = 0
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(path).read_text().splitlines()[1:]:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port:
                drops += int(cols[12])
    return drops


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_bound(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"collector exited early ({proc.returncode})")
        for path in ("/proc/net/udp", "/proc/net/udp6"):
            for line in Path(path).read_text().splitlines()[1:]:
                if int(line.split()[1].rsplit(":", 1)[1], 16) == port:
                    return
        time.sleep(0.05)
    raise RuntimeError("collector did not bind")


def wait_idle(pid: int, quiet: float = 0.6, timeout: float = 120) -> None:
    """Until the collector has stopped burning CPU (its backlog is processed)."""
    deadline = time.monotonic() + timeout
    last = tree_cpu(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = tree_cpu(pid)
        if now - last < 0.02:
            return
        last = now


# ---------------------------------------------------------------------------------------------------
# Collectors.


@dataclass
class Result:
    name: str
    sent: int
    kept: int
    kernel_drops: int
    user: float
    system: float
    send_seconds: float
    written: int
    """Bytes of output (archive files) the collector wrote."""

    @property
    def cpu(self) -> float:
        return self.user + self.system

    @property
    def per_cpu(self) -> float:
        return self.kept / self.cpu if self.cpu else 0.0

    @property
    def drop_rate(self) -> float:
        return 1 - self.kept / self.sent if self.sent else 0.0


def run_collector(
    name: str,
    cmd: list[str],
    port: int,
    count,
    output: Path,
    args,
    stream,
    env: dict | None = None,
    cwd: Path | None = None,
) -> Result:
    exporters, per_round = stream
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd)
    try:
        wait_bound(port, proc)
        time.sleep(0.5)
        wait_idle(proc.pid, quiet=0.3)
        # start-up CPU (imports, JIT compilation, pyarrow's first use) is not the traffic's cost
        base_user, base_sys = tree_cpu_split(proc.pid)
        took = replay_streams(exporters, port, args.rounds, args.rate, per_round)
        wait_idle(proc.pid)
        drops = udp_drops(port)
    finally:
        proc.send_signal(signal.SIGTERM)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        print(f"{name}: exit {proc.returncode}: {proc.stderr.read().decode()[-2000:]}", file=sys.stderr)
    user, system = ru.ru_utime - base_user, ru.ru_stime - base_sys
    result = Result(name, args.rounds * per_round, count(), drops, user, system, took, output_bytes(output))
    # Free the page cache the output holds before the next collector runs: on VMs that hand freed
    # memory back to the host, pages not recently used cost several times more to write into, so
    # output left behind would make later collectors pay for earlier ones (benchmarks/README.md).
    if output.is_dir():
        shutil.rmtree(output)
    else:
        output.unlink(missing_ok=True)
    return result


def bench_shoal(args, stream, work: Path, compression: str = "", source: Path | None = None) -> Result:
    """Shoal with its Parquet sink as configured by default, or with ``compression`` ("codec" or
    "codec:level", set through the environment); from another checkout's ``source`` tree if given
    (same virtualenv), for before/after figures in one run."""
    name = f"shoal/{compression}" if compression else "shoal"
    name += f"@{source.name}" if source else ""
    port, out = free_port(), work / name.replace("/", "-").replace(":", "_").replace("@", "_")
    env = dict(os.environ)
    if source:
        env["PYTHONPATH"] = str(source)
    if compression:
        codec, _, level = compression.partition(":")
        env["SHOAL_COLLECT__PARQUET__COMPRESSION"] = codec
        if level:
            env["SHOAL_COLLECT__PARQUET__COMPRESSION_LEVEL"] = level
    cmd = [
        str(ROOT / ".venv/bin/python"), "-m", "pipeline.cli", "collect",
        "--listen", f"127.0.0.1:{port}", "--parquet", str(out), "--rcvbuf", str(args.rcvbuf),
    ]  # fmt: skip

    def count() -> int:
        import pyarrow.parquet as pq

        files = [p for p in out.rglob("*.parquet") if not p.name.startswith(".")]
        return sum(pq.read_metadata(p).num_rows for p in files)

    return run_collector(name, cmd, port, count, out, args, stream, env, cwd=source)


def bench_nfcapd(args, stream, work: Path, lz4: bool = False) -> Result:
    """nfcapd writing its files plain, or LZ4-compressed with ``-y`` (its cheapest compression)."""
    name = "nfcapd -y" if lz4 else "nfcapd"
    port, out = free_port(), work / name.replace(" ", "")
    out.mkdir()
    cmd = ["nfcapd", "-w", str(out), "-p", str(port), "-b", "127.0.0.1", "-t", "3600", "-B", str(args.rcvbuf)]
    cmd += ["-y"] if lz4 else []

    def count() -> int:
        text = subprocess.run(
            ["nfdump", "-R", str(out), "-q", "-o", "fmt:%pr", "-N"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return sum(1 for line in text.splitlines() if line.strip())

    return run_collector(name, cmd, port, count, out, args, stream)


def goflow2_binary(args) -> str | None:
    if args.goflow2:
        return args.goflow2
    cache = ROOT / ".cache" / "goflow2"
    binary = cache / "bin" / "goflow2"
    if binary.exists():
        return str(binary)
    if not shutil.which("go"):
        return None
    env = dict(os.environ, GOPATH=str(cache / "gopath"), GOBIN=str(cache / "bin"), GOFLAGS="-modcacherw")
    print(f"building goflow2 {GOFLOW2_VERSION} with go install ...", file=sys.stderr)
    subprocess.run(
        ["go", "install", f"github.com/netsampler/goflow2/v2/cmd/goflow2@{GOFLOW2_VERSION}"],
        env=env,
        check=True,
    )
    return str(binary)


def _varint_messages(data: bytes) -> int:
    """Count length-delimited protobuf messages (goflow2 ``-format=bin``)."""
    pos, n, size = 0, 0, len(data)
    while pos < size:
        length, shift = 0, 0
        while True:
            b = data[pos]
            pos += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        pos += length
        n += 1
    return n


def bench_goflow2(args, stream, work: Path) -> Result | None:
    binary = goflow2_binary(args)
    if binary is None:
        print("goflow2: no binary and no Go toolchain; skipped", file=sys.stderr)
        return None
    port, out = free_port(), work / "goflow2.bin"
    cmd = [
        binary, "-listen", f"netflow://127.0.0.1:{port}", "-format", "bin", "-transport", "file",
        "-transport.file", str(out), "-transport.file.sep", "", "-addr", "127.0.0.1:0", "-loglevel", "error",
    ]  # fmt: skip
    return run_collector("goflow2", cmd, port, lambda: _varint_messages(out.read_bytes()), out, args, stream)


def build(args) -> tuple[tuple[list[list[bytes]], int], str]:
    """The stream ``args`` ask for, as (per-exporter packet lists, flows per round), and its line."""
    if args.stream == "ipfix":
        packets, per = build_ipfix_stream(args.distinct_flows)
        sizes = [len(p) for p in packets]
        args.rounds = max(1, args.flows // per)
        line = (
            f"stream: {args.rounds} IPFIX packets ({per} flows) from one exporter, "
            f"{len(packets) * per:,} distinct flows cycled"
        )
        exporters = [packets]
    else:
        v9, ipfix, per = build_stream(args.distinct)
        sizes = [len(p) for p in v9 + ipfix]
        args.rounds = max(1, args.flows // per)
        line = f"stream: {args.rounds} NetFlow v9 packets (35 flows) + {args.rounds} IPFIX packets (29 flows)"
        exporters = [v9, ipfix]
    line += f", ~{np.mean(sizes):.0f} B each, offered at {args.rate:,.0f} flows/s, SO_RCVBUF {args.rcvbuf}"
    return (exporters, per), line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--stream",
        choices=["ipfix", "v9+ipfix"],
        default="ipfix",
        help="ipfix: one IPFIX exporter, --distinct-flows flows with a backbone-like spread (issue 14's "
        "harness); v9+ipfix: the earlier NetFlow v9 + IPFIX pair with 254 addresses per side",
    )
    ap.add_argument("--flows", type=int, help="flows to offer to each collector (4.5M ipfix, 6M v9+ipfix)")
    ap.add_argument("--rate", type=float, default=1_500_000, help="offered load in flows/s")
    ap.add_argument("--rcvbuf", type=int, default=32 << 20, help="socket receive buffer for every collector")
    ap.add_argument("--distinct-flows", type=int, default=30_000, help="ipfix stream: distinct flows")
    ap.add_argument("--distinct", type=int, default=400, help="v9+ipfix: distinct packets per exporter")
    ap.add_argument(
        "--skip", default="", help="comma-separated collectors to skip (shoal,nfcapd-y,nfcapd,goflow2)"
    )
    ap.add_argument("--goflow2", help="path to a goflow2 binary")
    ap.add_argument(
        "--shoal-baseline",
        type=Path,
        help="also run Shoal's default archive from this checkout (e.g. /work/main), after Shoal's own runs",
    )
    ap.add_argument(
        "--shoal-compression",
        default="",
        help="Shoal's runs, comma-separated: empty for its default archive, else a Parquet codec "
        "(zstd,lz4,snappy,none) with an optional :level, e.g. ',zstd:1,lz4'",
    )
    args = ap.parse_args()
    if args.flows is None:
        args.flows = 4_500_000 if args.stream == "ipfix" else 6_000_000
    skip = set(filter(None, args.skip.split(",")))
    stream, line = build(args)
    print(machine_line())
    print(line)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        work = Path(tmp)
        runs = [
            ("shoal", functools.partial(bench_shoal, compression=codec))
            for codec in args.shoal_compression.split(",")
        ]
        if args.shoal_baseline:
            runs.append(("shoal", functools.partial(bench_shoal, source=args.shoal_baseline.resolve())))
        peers = [
            ("nfcapd-y", functools.partial(bench_nfcapd, lz4=True)),
            ("nfcapd", bench_nfcapd),
            ("goflow2", bench_goflow2),
        ]
        for name, fn in [*runs, *peers]:
            if name in skip:
                continue
            r = fn(args, stream, work)
            if r is not None:
                results.append(r)
                print(
                    f"  {r.name:11s} kept {r.kept:>10,} / {r.sent:,} flows, drops {r.drop_rate:6.2%} "
                    f"(kernel {r.kernel_drops:,} datagrams), CPU {r.cpu:6.2f} s "
                    f"(user {r.user:.2f}, sys {r.system:.2f}), {r.per_cpu:>12,.0f} flows/CPU-s, "
                    f"output {r.written / max(r.kept, 1):.1f} B/flow, sent in {r.send_seconds:.1f} s",
                    flush=True,
                )
    shoal = next((r for r in results if r.name.startswith("shoal")), None)
    if shoal and shoal.per_cpu:
        print(f"ratios to {shoal.name} (flows per CPU-second, bytes per flow; drop rate):")
        for r in results:
            print(
                f"  {r.name:11s} {r.per_cpu / shoal.per_cpu:5.2f}x   "
                f"{r.written / max(r.kept, 1) / max(shoal.written / max(shoal.kept, 1), 1e-9):6.2f}x B/flow   "
                f"drops {r.drop_rate:6.2%}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
