"""Collector workers (issue 14): flows/s kept by ``shoal collect`` (LZ4 Parquet, the default) with 1 and
with 2 workers, in the same run, from many exporters (distinct source addresses and ports on loopback,
127.1.x.y, so the kernel's SO_REUSEPORT hash spreads them and each has its own sequence numbers),
each exporter replaying pre-built NetFlow v9 or IPFIX packets (``bench_collect``'s) with
``sendmmsg``. Two measurements, because the sender runs on the same two
cores as the collector:

* **live**: the sender offers ``--rate`` flows/s for ``--seconds``, more than one worker keeps;
  reported: flows kept per second (kept / time until the collector went idle), drops, the CPU of each
  collector process and of the sender thread (``CLOCK_THREAD_CPUTIME_ID``, which includes the kernel's
  loopback delivery into the collector's sockets: part of receiving is paid by the sender here);
* **backlog**: the collector's processes are stopped (SIGSTOP) while the sender queues ``--backlog``
  flows in their sockets (large SO_RCVBUF), then resumed: the collector drains with the machine to
  itself. Reported: flows kept per second of draining and its CPU.
* **streams**: the decoder alone on blocks of 2,048 datagrams from 2 to 256 export streams (why a
  worker with fewer exporters spends less CPU per flow), with glibc's allocator tuned as in a
  collector worker (``--default-allocator``: as glibc has it).

CPU is user+sys of each process (all its threads) from /proc; the end of processing is the last
50 ms sample in which the collector's processes used more than a fifth of a core. The machine is
shared: each attempt waits at most ``--quiet-wait`` seconds for a quiet second (then runs anyway,
printing the load it saw), reports the cores everything else used meanwhile (/proc/stat), and is
run again, the discarded attempt printed, when that exceeds ``--max-others``, at most ``--attempts``
times (the last attempt is kept whatever the load).

    .venv/bin/python -m benchmarks.bench_collect_workers [--rate 4e6] [--seconds 4] [--backlog 6e6]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.bench_collect import (
    CLK_TCK,
    ROOT,
    _IoVec,
    _libc,
    _MMsgHdr,
    build_stream,
    free_port,
    udp_drops,
)
from benchmarks.machine import machine_line

FILE_WORKER = re.compile(r"-w(\d+)-[0-9a-f]{12}\.parquet$")


def exporter_address(k: int) -> str:
    """Exporter ``k``'s own loopback address (all of 127.0.0.0/8 is local)."""
    return f"127.1.{k // 250}.{k % 250 + 1}"


class Exporters:
    """``count`` exporters (one connected UDP socket each, distinct source ports), alternating v9 and
    IPFIX; each cycles through the shared pre-built packets with ``sendmmsg``."""

    def __init__(self, count: int, v9: list[bytes], ipfix: list[bytes], target: tuple[str, int]) -> None:
        self.streams = []
        for packets, flows in ((v9, 35), (ipfix, 29)):
            bufs = [ctypes.create_string_buffer(p, len(p)) for p in packets]
            iov = (_IoVec * len(packets))()
            msgs = (_MMsgHdr * len(packets))()
            for i, b in enumerate(bufs):
                iov[i].base, iov[i].len = ctypes.addressof(b), len(packets[i])
                msgs[i].hdr.iov = ctypes.pointer(iov[i])
                msgs[i].hdr.iovlen = 1
            self.streams.append((bufs, iov, msgs, len(packets), flows))
        self.socks, self.pos = [], [0] * count
        for k in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.bind((exporter_address(k), 0))
            s.connect(target)
            self.socks.append(s)
        self.flows_sent = 0

    def round(self, per_exporter: int) -> None:
        """Each exporter sends ``per_exporter`` packets (one ``sendmmsg``)."""
        size = ctypes.sizeof(_MMsgHdr)
        for k, sock in enumerate(self.socks):
            _, _, msgs, n, flows = self.streams[k % 2]
            pos = self.pos[k]
            chunk = min(per_exporter, n - pos)
            sent = _libc.sendmmsg(sock.fileno(), ctypes.byref(msgs, pos * size), chunk, 0)
            if sent < 0:
                err = ctypes.get_errno()
                if err not in (11, 105, 111, 4):  # EAGAIN, ENOBUFS, ECONNREFUSED, EINTR
                    raise OSError(err, os.strerror(err))
                continue
            self.pos[k] = (pos + sent) % n
            self.flows_sent += sent * flows

    def flows_per_round(self, per_exporter: int) -> float:
        return per_exporter * sum(self.streams[k % 2][4] for k in range(len(self.socks)))

    def close(self) -> None:
        for s in self.socks:
            s.close()


def send_paced(
    exporters: Exporters, rate: float, seconds: float, per_exporter: int = 2
) -> tuple[float, float]:
    """Offer ``rate`` flows/s for ``seconds``; (wall seconds, sender CPU-seconds)."""
    interval = exporters.flows_per_round(per_exporter) / rate
    cpu0, start = time.thread_time(), time.perf_counter()
    rounds = 0
    while time.perf_counter() - start < seconds:
        exporters.round(per_exporter)
        rounds += 1
        ahead = start + rounds * interval - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
    return time.perf_counter() - start, time.thread_time() - cpu0


def send_all(exporters: Exporters, flows: int, per_exporter: int = 8) -> tuple[float, float]:
    cpu0, start = time.thread_time(), time.perf_counter()
    while exporters.flows_sent < flows:
        exporters.round(per_exporter)
    return time.perf_counter() - start, time.thread_time() - cpu0


# ---------------------------------------------------------------------------------------------------
def process_cpu(pid: int, system_only: bool = False) -> float:
    """CPU-seconds of a process (all its threads): user+sys, or sys alone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[12]) + (0 if system_only else int(fields[11]))) / CLK_TCK


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU-seconds (user+sys) of each thread of a process, by thread id."""
    out = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                out[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def machine_busy() -> float:
    """CPU-seconds all processes have used on this machine so far (/proc/stat, not idle or iowait)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def wait_quiet(seconds: float, idle: float = 0.9) -> float:
    """Up to ``seconds`` for one second in which the machine was at least ``idle`` idle; the cores
    other jobs used in the last second looked at."""
    deadline = time.monotonic() + seconds
    while True:
        before, t0 = machine_busy(), time.monotonic()
        time.sleep(1.0)
        used = (machine_busy() - before) / (time.monotonic() - t0)
        if used <= (1 - idle) * (os.cpu_count() or 1) or time.monotonic() > deadline:
            return used


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def wait_processed(pids: list[int], quiet: float = 1.0, busy: float = 0.2) -> float:
    """Sample the processes' CPU every 50 ms until they have been idle (< ``busy`` cores) for
    ``quiet`` seconds; returns the end of the last busy sample (perf_counter), at the earliest now."""
    prev, prev_t = sum(process_cpu(p) for p in pids), time.perf_counter()
    last_busy = prev_t
    while time.perf_counter() - last_busy < quiet:
        time.sleep(0.05)
        now, t = sum(process_cpu(p) for p in pids), time.perf_counter()
        if (now - prev) / (t - prev_t) >= busy:
            last_busy = t
        prev, prev_t = now, t
    return last_busy


@dataclass
class Run:
    workers: int
    mode: str
    one_core: bool = False
    """The collector confined to one core (CPU affinity), its threads too."""
    sent: int = 0
    kept: int = 0
    drops: int = 0
    seconds: float = 0.0
    """From the first datagram (live) or from SIGCONT (backlog) to the end of processing."""
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU-seconds over ``seconds`` per process (w0, w1, supervisor)."""
    system: float = 0.0
    """Of which kernel time (receiving, page cache), all processes."""
    sender_cpu: float = 0.0
    sender_seconds: float = 0.0
    others: float = 0.0
    """CPU-seconds used meanwhile by everything else on the machine (other jobs; for live runs also
    the sender, whose own share is reported apart)."""
    per_worker: dict[int, int] = field(default_factory=dict)
    threads: dict[str, list[float]] = field(default_factory=dict)
    """CPU-seconds of each worker's busiest threads (receiving and decoding, then writing Parquet)."""

    @property
    def rate(self) -> float:
        return self.kept / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        total = sum(self.cpu.values())
        parts = ", ".join(f"{k} {v / self.seconds:.2f}" for k, v in self.cpu.items())
        threads = ", ".join(
            f"{k} " + "/".join(f"{v / self.seconds:.2f}" for v in cpu[:3]) for k, cpu in self.threads.items()
        )
        share = "/".join(f"{100 * n / max(self.kept, 1):.0f}%" for _, n in sorted(self.per_worker.items()))
        sender = (
            f"; sender {self.sender_cpu:.2f} CPU-s in {self.sender_seconds:.1f} s "
            f"({self.sender_cpu / self.sender_seconds:.2f} cores)"
            if self.sender_seconds
            else ""
        )
        return (
            f"  {self.workers} worker{'s' if self.workers > 1 else ' '}{', 1 core' if self.one_core else ''} "
            f"kept {self.kept:>11,} / {self.sent:,} "
            f"(drops {1 - self.kept / max(self.sent, 1):6.2%}, kernel {self.drops:,} datagrams) in "
            f"{self.seconds:5.2f} s: {self.rate / 1e6:5.2f}M flows/s kept; collector {total:.2f} CPU-s "
            f"(sys {self.system / max(total, 1e-9):.0%}; {total / self.seconds:.2f} cores: {parts}), "
            f"{self.kept / max(total, 1e-9) / 1e6:.2f}M "
            f"flows/CPU-s; rows per worker {share}{sender}; busiest threads {threads}; everything else on the machine "
            f"{self.others / self.seconds:.2f} cores"
        )


def run(workers: int, mode: str, args, stream, work: Path, one_core: bool = False) -> Run:
    v9, ipfix, _ = stream
    port, out = free_port(), work / f"out-{mode}-{workers}"
    rcvbuf = args.rcvbuf if mode == "live" else args.backlog_rcvbuf
    cmd = [str(ROOT / ".venv/bin/python"), "-m", "pipeline.cli", "collect", "--listen", f"127.0.0.1:{port}",
           "--parquet", str(out), "--rcvbuf", str(rcvbuf), "--workers", str(workers)]  # fmt: skip
    env = dict(os.environ, SHOAL_COLLECT__BATCH__MAX_SECONDS="0.1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if one_core:  # before the interpreter starts its threads (they inherit it)
        os.sched_setaffinity(proc.pid, {max(os.sched_getaffinity(0))})
    result = Run(workers, mode, one_core)
    try:
        banner = proc.stdout.readline()
        if "listening on" not in banner:
            raise RuntimeError(f"collector did not start: {banner}{proc.stderr.read()[-2000:]}")
        pids = {"w0": proc.pid} if workers == 1 else {}
        if workers > 1:
            m = re.search(r"pids ([\d, ]+)", proc.stdout.readline())
            assert m
            pids = {f"w{i}": int(p) for i, p in enumerate(m.group(1).split(", "))}
            pids["supervisor"] = proc.pid
        time.sleep(1.0)
        exporters = Exporters(args.exporters, v9, ipfix, ("127.0.0.1", port))
        workers_pids = [pids[k] for k in pids if k != "supervisor"]
        if mode == "live":
            base, busy = {k: process_cpu(p) for k, p in pids.items()}, machine_busy()
            base_threads = {k: thread_cpu(p) for k, p in pids.items() if k != "supervisor"}
            base_sys = sum(process_cpu(p, system_only=True) for p in pids.values())
            start = time.perf_counter()
            result.sender_seconds, result.sender_cpu = send_paced(exporters, args.rate, args.seconds)
        else:
            for p in workers_pids:
                os.kill(p, signal.SIGSTOP)
            _, _ = send_all(exporters, int(args.backlog))
            base, busy = {k: process_cpu(p) for k, p in pids.items()}, machine_busy()
            base_threads = {k: thread_cpu(p) for k, p in pids.items() if k != "supervisor"}
            base_sys = sum(process_cpu(p, system_only=True) for p in pids.values())
            start = time.perf_counter()
            for p in workers_pids:
                os.kill(p, signal.SIGCONT)
        end = wait_processed(list(pids.values()))
        result.seconds = end - start
        result.cpu = {k: process_cpu(p) - base[k] for k, p in pids.items()}
        for k, before in base_threads.items():
            after = thread_cpu(pids[k])
            result.threads[k] = sorted((after[t] - before.get(t, 0.0) for t in after), reverse=True)
        result.system = sum(process_cpu(p, system_only=True) for p in pids.values()) - base_sys
        # (the idle second wait_processed waits for is left out of the others' share)
        result.others = max(0.0, machine_busy() - busy - sum(result.cpu.values()) - result.sender_cpu)
        result.others *= result.seconds / (time.perf_counter() - start)
        result.sent = exporters.flows_sent
        result.drops = udp_drops(port)
        exporters.close()
    finally:
        proc.send_signal(signal.SIGCONT)
        for p in children(proc.pid):
            os.kill(p, signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        print(f"collector exit {proc.returncode}: {err[-2000:]}", file=sys.stderr)
    import pyarrow.parquet as pq

    per_worker: collections.Counter[int] = collections.Counter()
    for path in out.rglob("*.parquet"):
        if not path.name.startswith("."):
            m = FILE_WORKER.search(path.name)
            per_worker[int(m.group(1)) if m else 0] += pq.read_metadata(path).num_rows
    result.per_worker = dict(per_worker)
    result.kept = sum(per_worker.values())
    shutil.rmtree(out, ignore_errors=True)  # free the page cache before the next run (bench_collect)
    return result


class StreamBlocks:
    """Blocks of ``n`` data-only datagrams from ``streams`` export streams (alternately v9 and IPFIX)
    for one decoder, which learns the templates first; every block goes on with each stream's
    sequence numbers (no gaps, no resets)."""

    def __init__(self, v9: list[bytes], ipfix: list[bytes], streams: int, n: int = 2048) -> None:
        from pipeline.collector.batcher import Batcher
        from pipeline.decode import FlowDecoder
        from pipeline.schemas import FLOW_SCHEMA

        self.streams, self.n, self.block = streams, n, 0
        self.source = np.arange(n, dtype=np.intp) % streams
        self.is_v9 = self.source % 2 == 0
        data_only = ([p for k, p in enumerate(v9) if k % 20], [p for k, p in enumerate(ipfix) if k % 20])
        self.data, self.lengths = np.zeros((n, 1500), np.uint8), np.zeros(n, np.int64)
        for i in range(n):
            packets = data_only[0 if self.is_v9[i] else 1]
            packet = packets[(i // streams) % len(packets)]
            self.data[i, : len(packet)] = np.frombuffer(packet, np.uint8)
            self.lengths[i] = len(packet)
        self.flows = int(np.where(self.is_v9, 35, 29).sum())
        self.senders = [(exporter_address(k), 10_000 + k) for k in range(streams)]
        self.decoder, self.batcher = FlowDecoder(), Batcher(FLOW_SCHEMA, 65536, 1.0)
        first = [(v9 if k % 2 == 0 else ipfix)[0] for k in range(streams)]  # sequence 0, with templates
        warm = np.zeros((streams, max(len(p) for p in first)), np.uint8)
        for k, packet in enumerate(first):
            warm[k, : len(packet)] = np.frombuffer(packet, np.uint8)
        self.decoder.decode_block(
            warm, np.array([len(p) for p in first]), np.arange(streams), self.senders, 1.79e9
        )

    def decode_next(self) -> None:
        ordinal = 1 + self.block * (self.n // self.streams) + np.arange(self.n) // self.streams
        v9, ipfix = self.is_v9, ~self.is_v9
        self.data[v9, 12:16] = ordinal[v9].astype(">u4").view(np.uint8).reshape(-1, 4)  # v9 counts packets
        self.data[ipfix, 8:12] = (
            (ordinal[ipfix] * 29).astype(">u4").view(np.uint8).reshape(-1, 4)
        )  # IPFIX records
        self.decoder.decode_block(
            self.data, self.lengths, self.source, self.senders, 1.79e9, into=self.batcher
        )
        self.batcher.collect()
        self.block += 1

    def sequence_events(self) -> int:
        snapshot = self.decoder.stats.snapshot()
        return sum(sum(v.values()) for k, v in snapshot.items() if k.startswith("sequence_"))


def decode_streams(v9: list[bytes], ipfix: list[bytes], counts=(2, 16, 64, 128, 256)) -> None:
    """``FlowDecoder.decode_block`` alone on blocks of 2,048 datagrams (the collector's largest) from
    ``counts`` export streams: the decoder works per (stream, template) group, so the cost per flow
    depends on how many streams share a block, i.e. on how many exporters a worker has."""
    for streams in counts:
        blocks = StreamBlocks(v9, ipfix, streams)
        blocks.decode_next()
        rates = []
        for _ in range(3):  # three trials of at least half a CPU-second: the spread shows the noise
            cpu, done = time.process_time(), 0
            while time.process_time() - cpu < 0.5:
                blocks.decode_next()
                done += blocks.flows
            rates.append(done / (time.process_time() - cpu))
        print(f"  {streams:4d} export streams per block: {min(rates) / 1e6:5.2f}-{max(rates) / 1e6:.2f}M "
              f"flows/CPU-s (sequence gaps and resets: {blocks.sequence_events()})", flush=True)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exporters", type=int, default=256, help="exporters (distinct source ports)")
    ap.add_argument("--rate", type=float, default=4e6, help="live: offered flows/s")
    ap.add_argument("--seconds", type=float, default=4.0, help="live: seconds of traffic")
    ap.add_argument("--rcvbuf", type=int, default=32 << 20, help="live: SO_RCVBUF per socket")
    ap.add_argument("--backlog", type=float, default=6e6, help="backlog: flows queued while stopped")
    ap.add_argument("--backlog-rcvbuf", type=int, default=1 << 30, help="backlog: SO_RCVBUF per socket")
    ap.add_argument("--modes", default="live,backlog,streams", help="live, backlog, streams")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of (1 worker, 2 workers) per mode")
    ap.add_argument("--distinct", type=int, default=400, help="distinct pre-built packets per version")
    ap.add_argument("--one-core", action="store_true", help="also run 1 worker confined to one core")
    ap.add_argument("--max-others", type=float, default=0.2,
                    help="run again (printing the attempt) when other jobs used more cores than this")  # fmt: skip
    ap.add_argument("--default-allocator", action="store_true",
                    help="streams: leave glibc's allocator untuned (the collector's workers tune it)")  # fmt: skip
    ap.add_argument("--attempts", type=int, default=3, help="attempts per run at most")
    ap.add_argument(
        "--quiet-wait", type=float, default=20, help="seconds to wait for a quiet machine per attempt"
    )
    args = ap.parse_args()
    v9, ipfix, _ = build_stream(args.distinct)
    print(machine_line())
    print(
        f"stream: {args.exporters} exporters (distinct loopback addresses and ports), half NetFlow v9 (35 flows "
        f"per packet), half IPFIX (29), ~{np.mean([len(p) for p in v9 + ipfix]):.0f} B per datagram"
    )
    with tempfile.TemporaryDirectory(prefix="shoal-bench-workers-") as tmp:
        for mode in args.modes.split(","):
            if mode == "streams":
                if not args.default_allocator:
                    from pipeline.allocator import tune_allocator

                    tune_allocator()  # as each collector worker does
                allocator = "glibc's default allocator" if args.default_allocator else "allocator tuned"
                print(f"streams: decode_block alone, 2,048 datagrams per block, {allocator}")
                decode_streams(v9, ipfix)
                continue
            if mode == "live":
                print(
                    f"live: offered {args.rate:,.0f} flows/s for {args.seconds:g} s, SO_RCVBUF {args.rcvbuf}"
                )
            else:
                print(
                    f"backlog: {args.backlog:,.0f} flows queued while the collector is stopped, then drained"
                )
            for _ in range(args.repeat):
                configs = [(1, False), (2, False)] + ([(1, True)] if args.one_core else [])
                runs = []
                for workers, one_core in configs:
                    for attempt in range(1, args.attempts + 1):
                        seen = wait_quiet(args.quiet_wait)
                        if seen > args.max_others:
                            print(f"  (machine not quiet: {seen:.2f} cores busy in the last second; "
                                  f"load {os.getloadavg()[0]:.2f}; running anyway)", flush=True)  # fmt: skip
                        r = run(workers, mode, args, (v9, ipfix, 0), Path(tmp), one_core)
                        if r.others / r.seconds <= args.max_others or attempt == args.attempts:
                            break
                        print(r.line() + " -- discarded: other jobs were busy", flush=True)
                    print(r.line(), flush=True)
                    runs.append(r)
                one, two = runs[:2]
                print(
                    f"  2 workers / 1: {two.rate / max(one.rate, 1):.2f}x flows/s kept, "
                    f"{(two.kept / sum(two.cpu.values())) / (one.kept / sum(one.cpu.values())):.2f}x flows per "
                    f"CPU-second",
                    flush=True,
                )
                if args.one_core:
                    print(
                        f"  2 workers / 1 worker on 1 core: {two.rate / max(runs[2].rate, 1):.2f}x flows/s kept"
                    )
    print(machine_line().replace("machine:", "machine at the end:"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
