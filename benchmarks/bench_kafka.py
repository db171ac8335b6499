"""End to end over Kafka: flows topic -> ``shoal detect`` workers -> alerts topic, on one real broker.

    .venv/bin/python -m benchmarks.bench_kafka [--workers 2] [--partitions 4] [--drain-flows 8000000]
                                               [--rate 500000] [--seconds 20] [--indicators 100000]

Two phases on a fresh single-node broker (started by scripts/kafka.sh in a temporary directory):

1. Capacity: the flows topic is filled with ``--drain-flows`` flows first, then the workers start and
   drain it; flows/s is the flows matched divided by the time from the first to the last one matched.
2. Latency: flows are offered at ``--rate`` flows/s for ``--seconds``, each batch stamped with its
   send time as ``time_received`` (the collector's receipt); a read_committed consumer takes every
   alert and records (now - time_received): the delay until the alert is committed and readable.
3. Through the collector: NetFlow v9 + IPFIX packets (bench_collect's stream) sent over UDP at
   ``--rate`` into ``shoal collect --kafka`` (batches of at most 0.25 s), then the same workers; the
   latency runs from the collector's receipt of a packet to its alert being readable.

In phases 1 and 2 an injector stands in for ``shoal collect --kafka`` (16,384-row batches, zstd Arrow
IPC, keyed by 16 exporters). Flows have random campus sources and public destinations, ~0.5% of
destinations an indicator. CPU seconds are reported per process (broker, workers, injector or
collector), all sharing the machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
from confluent_kafka import Consumer

from benchmarks.machine import machine_line
from pipeline.intel.load import IntelLoad
from pipeline.intel.model import Condition, Indicator
from pipeline.metrics import new_registry
from pipeline.schemas import FLOW_SCHEMA, V4_MAPPED_PREFIX
from pipeline.sinks.kafka import KafkaSink
from pipeline.transport.config import load_streams_config
from pipeline.transport.indicators import publish
from pipeline.transport.topics import create_topics

ROOT = Path(__file__).resolve().parents[1]
ROWS = 16_384
EXPORTERS = 16
CLK_TCK = os.sysconf("SC_CLK_TCK")


def v4_column(values: np.ndarray) -> pa.Array:
    raw = np.zeros((len(values), 16), dtype=np.uint8)
    raw[:, :12] = np.frombuffer(V4_MAPPED_PREFIX, dtype=np.uint8)
    raw[:, 12:] = values.astype(">u4").view(np.uint8).reshape(-1, 4)
    return pa.Array.from_buffers(pa.binary(16), len(values), [None, pa.py_buffer(raw.tobytes())])


def make_batches(
    n_batches: int, targets: np.ndarray, rng: np.random.Generator
) -> tuple[list[pa.RecordBatch], int]:
    """Flow batches (one exporter each) and how many of their flows hit an indicator."""
    out, hits = [], 0
    for b in range(n_batches):
        src = rng.integers(0x64400000, 0x647FFFFF, ROWS, dtype=np.uint64)  # 100.64.0.0/10: campus side
        dst = rng.integers(0x01000000, 0xDF000000, ROWS, dtype=np.uint64)
        hit = rng.random(ROWS) < 0.005
        dst[hit] = targets[rng.integers(0, len(targets), int(hit.sum()))]
        hits += int(hit.sum())
        cols: dict[str, pa.Array] = {}
        for field in FLOW_SCHEMA:
            if field.name in ("src_addr", "dst_addr"):
                cols[field.name] = v4_column(src if field.name == "src_addr" else dst)
            elif field.name == "exporter":
                cols[field.name] = v4_column(np.full(ROWS, 0x0A000001 + b % EXPORTERS, dtype=np.uint64))
            elif pa.types.is_timestamp(field.type):
                cols[field.name] = pa.array(np.zeros(ROWS, np.int64)).view(field.type)
            elif field.name == "next_hop":
                cols[field.name] = pa.nulls(ROWS, field.type)
            elif field.name in ("src_port", "dst_port"):
                cols[field.name] = pa.array(rng.integers(1, 65535, ROWS).astype(np.uint16))
            else:
                cols[field.name] = pa.array(np.ones(ROWS, dtype=field.type.to_pandas_dtype()))
        out.append(pa.RecordBatch.from_pydict(cols, schema=FLOW_SCHEMA))
    return out, hits


def stamped(batch: pa.RecordBatch, when: float) -> pa.RecordBatch:
    column = pa.array(np.full(batch.num_rows, int(when * 1e6), np.int64)).view(
        FLOW_SCHEMA.field("time_received").type
    )
    return batch.set_column(0, FLOW_SCHEMA.field("time_received"), column)


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return sum(int(x) for x in fields[11:13]) / CLK_TCK


def scrape_total(port: int, name: str) -> float:
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AlertReader(threading.Thread):
    """read_committed consumer of the alerts topic: counts alerts, records commit latencies."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                                  "auto.offset.reset": "latest", "isolation.level": "read_committed"})  # fmt: skip
        self.consumer.subscribe([topic])
        self.count = 0
        self.latencies: list[float] = []
        self.record = False
        self.stop = threading.Event()

    def run(self) -> None:
        import json

        while not self.stop.is_set():
            for msg in self.consumer.consume(num_messages=10_000, timeout=0.2):
                if msg.error() is not None:
                    continue
                self.count += 1
                if self.record:
                    received = json.loads(msg.value())["time_received"]
                    when = np.datetime64(received.rstrip("Z"), "us").astype(np.int64) / 1e6
                    self.latencies.append(time.time() - when)
        self.consumer.close()


def through_collector(args, bootstrap, config, streams, reader, workers, broker_pid, matched) -> None:
    """Phase 3: UDP export packets -> shoal collect --kafka -> workers -> alerts."""
    from benchmarks.bench_collect import build_stream, replay

    udp_intel = IntelLoad("bench-udp")
    net = __import__("ipaddress").IPv4Network("203.0.113.7/32")  # 1 in 254 of the stream's destinations
    udp_intel.indicators.append(
        Indicator("bench-udp-1", "203.0.113.7", "bench-udp", (Condition(network=net),))
    )
    publish(bootstrap, streams.topics.indicators.name, [udp_intel])
    v9, ipfix, per_pair = build_stream(2000)
    port = free_port()
    env = {**os.environ, "SHOAL_COLLECT__BATCH__MAX_SECONDS": "0.25"}
    collector = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "collect", "--listen", f"127.0.0.1:{port}",
                                  "--kafka", bootstrap, "--kafka-topic", streams.topics.flows.name], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        collector.stdout.readline()
        time.sleep(3)  # the intel change reaches the workers
        reader.latencies = []
        pids = {"broker": broker_pid, "collector": collector.pid} | {
            f"w{i}": p.pid for i, (p, _) in enumerate(workers)
        }
        cpu0 = {k: proc_cpu(v) for k, v in pids.items()}
        before = matched()
        pairs = int(args.rate * args.seconds / per_pair)
        took = replay(v9, ipfix, port, pairs, args.rate, per_pair)
        last, still = matched(), time.monotonic()
        while time.monotonic() - still < 3:
            time.sleep(0.25)
            now = matched()
            if now != last:
                last, still = now, time.monotonic()
        cpu1 = {k: proc_cpu(v) for k, v in pids.items()}
    finally:
        collector.terminate()
        collector.wait(30)
    sent, kept = pairs * per_pair, last - before
    lat = np.array(reader.latencies)
    print(f"through the collector: sent {sent:,} flows over UDP at {sent / took:,.0f} flows/s; "
          f"{kept:,.0f} matched ({100 * (1 - kept / sent):.2f}% lost before Kafka); {len(lat):,} alerts read")  # fmt: skip
    if len(lat):
        print(f"  packet receipt -> alert committed: p50 {np.percentile(lat, 50):.3f} s, "
              f"p99 {np.percentile(lat, 99):.3f} s, max {lat.max():.3f} s")  # fmt: skip
    print(
        "  CPU s: "
        + ", ".join(f"{k} {cpu1[k] - cpu0[k]:.1f}" for k in cpu1)
        + f" (over {took:.1f} s of sending)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--drain-flows", type=int, default=8_000_000)
    ap.add_argument("--rate", type=float, default=500_000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--indicators", type=int, default=100_000)
    args = ap.parse_args()
    rng = np.random.default_rng(11)
    print(machine_line())
    work = Path(tempfile.mkdtemp(prefix="shoal-bench-kafka-"))
    env = {**os.environ, "SHOAL_KAFKA_DIR": str(work / "broker"), "PYTHON": sys.executable}
    bootstrap = subprocess.run([str(ROOT / "scripts" / "kafka.sh"), "start"], env=env, capture_output=True, text=True,
                               check=True).stdout.strip().splitlines()[-1]  # fmt: skip
    broker_pid = int((work / "broker" / "pid").read_text())
    workers: list[tuple[subprocess.Popen, int]] = []
    reader: AlertReader | None = None
    try:
        tag = uuid.uuid4().hex[:6]
        config = work / "streams.toml"
        config.write_text(f'[topics.flows]\nname = "b{tag}.flows"\npartitions = {args.partitions}\n'
                          f'[topics.alerts]\nname = "b{tag}.alerts"\npartitions = {args.partitions}\n'
                          f'[topics.indicators]\nname = "b{tag}.indicators"\n[detect]\ngroup = "b{tag}"\n')  # fmt: skip
        streams = load_streams_config(config)
        print(
            f"broker: Kafka (scripts/kafka.sh) at {bootstrap}; topics {create_topics(bootstrap, streams.topics.all())}"
        )
        targets = rng.integers(0x01000000, 0xDF000000, args.indicators, dtype=np.uint64)
        load = IntelLoad("bench-intel")
        for n, t in enumerate(targets.tolist()):
            net = __import__("ipaddress").IPv4Network(t)
            load.indicators.append(
                Indicator(f"bench-{n}", str(net.network_address), "bench", (Condition(network=net),))
            )
        publish(bootstrap, streams.topics.indicators.name, [load])
        n_drain = max(1, args.drain_flows // ROWS)
        batches, _ = make_batches(64, targets, rng)
        sink = KafkaSink(bootstrap, streams.topics.flows.name, new_registry(), {"linger.ms": 50})
        t0 = time.monotonic()
        for i in range(n_drain):
            sink.write(stamped(batches[i % len(batches)], time.time()))
        sink.flush(120)
        drain_flows = n_drain * ROWS
        print(f"capacity phase: {drain_flows:,} flows pre-loaded in {time.monotonic() - t0:.1f} s; "
              f"{args.workers} workers on {args.partitions} partitions, {args.indicators:,} indicators")  # fmt: skip

        for w in range(args.workers):
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "detect", "--kafka", bootstrap, "--config",
                                     str(config), "--instance-id", f"w{w}", "--metrics", f"127.0.0.1:{port}"],
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
            workers.append((proc, port))
        for proc, _ in workers:
            proc.stdout.readline()  # banner: intel read and index built
        cpu0 = {"broker": proc_cpu(broker_pid)} | {
            f"w{i}": proc_cpu(p.pid) for i, (p, _) in enumerate(workers)
        }
        reader = AlertReader(bootstrap, streams.topics.alerts.name)
        reader.start()

        def matched() -> float:
            return sum(scrape_total(port, "shoal_matcher_flows_total") for _, port in workers)

        first = last = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = matched()
            now = time.monotonic()
            if first is None and done > 0:
                first = (now, done)
            if done >= drain_flows:
                last = now
                break
            time.sleep(0.1)
        if first is None or last is None:
            print("capacity phase: workers did not finish")
            return 1
        rate = (drain_flows - first[1]) / max(last - first[0], 1e-9)
        cpu1 = {"broker": proc_cpu(broker_pid)} | {
            f"w{i}": proc_cpu(p.pid) for i, (p, _) in enumerate(workers)
        }
        print(f"  drained at {rate:,.0f} flows/s end to end ({drain_flows:,} flows in {last - first[0]:.1f} s); "
              f"alerts read so far {reader.count:,}")  # fmt: skip
        print(
            "  CPU s (from the workers' start-up to the end of the drain): "
            + ", ".join(f"{k} {cpu1[k] - cpu0[k]:.1f}" for k in cpu1)
        )

        # Latency at a fixed offered rate.
        time.sleep(2)
        reader.record = True
        interval = ROWS / args.rate
        sent, start = 0, time.monotonic()
        inj0, cpu2 = (
            time.process_time(),
            {"broker": proc_cpu(broker_pid)} | {f"w{i}": proc_cpu(p.pid) for i, (p, _) in enumerate(workers)},
        )
        matched0 = matched()
        while time.monotonic() - start < args.seconds:
            due = start + sent * interval
            with contextlib.suppress(ValueError):
                time.sleep(max(0.0, due - time.monotonic()))
            sink.write(stamped(batches[sent % len(batches)], time.time()))
            sent += 1
        sink.close()
        offered_s = time.monotonic() - start
        target = matched0 + sent * ROWS
        deadline = time.monotonic() + 60
        while matched() < target and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3)
        elapsed = time.monotonic() - start
        cpu3 = {"broker": proc_cpu(broker_pid)} | {
            f"w{i}": proc_cpu(p.pid) for i, (p, _) in enumerate(workers)
        }
        lat = np.array(reader.latencies)
        done = matched() - matched0
        print(f"latency phase: offered {sent * ROWS:,} flows at {sent * ROWS / offered_s:,.0f} flows/s for "
              f"{offered_s:.1f} s; matched {done:,.0f}; {len(lat):,} alerts read (read_committed)")  # fmt: skip
        if len(lat):
            print(f"  receipt -> alert committed: p50 {np.percentile(lat, 50):.3f} s, p99 {np.percentile(lat, 99):.3f} s, "
                  f"max {lat.max():.3f} s")  # fmt: skip
        print("  CPU s: " + ", ".join(f"{k} {cpu3[k] - cpu2[k]:.1f}" for k in cpu3)
              + f", injector {time.process_time() - inj0:.1f} (over {elapsed:.1f} s wall)")  # fmt: skip
        through_collector(args, bootstrap, config, streams, reader, workers, broker_pid, matched)
    finally:
        if reader is not None:
            reader.stop.set()
        for proc, _ in workers:
            proc.terminate()
        for proc, _ in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        subprocess.run([str(ROOT / "scripts" / "kafka.sh"), "stop"], env=env, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
