"""Confirmation over Kafka: what it costs the matcher workers, what it sends, and how soon a flow's
detection is readable.

    .venv/bin/python -m benchmarks.bench_confirm [--workers 2] [--partitions 4] [--drain-flows 4000000]
        [--hit-share 0.01] [--indicators 1000] [--hosts 500] [--pairs 200] [--rate 200000] [--seconds 40]
        [--emit-seconds 10]

One fresh broker (scripts/kafka.sh), then in one run:

1. Capacity, confirmation off and on: the flows topic is pre-loaded with ``--drain-flows`` flows
   (16,384-row batches, ``--hit-share`` of flows from campus hosts to indicators: from ``--pairs``
   (indicator, host) pairs, or with ``--pairs 0`` any of ``--hosts`` hosts to any of ``--indicators``
   indicators, aggregation's worst case; the rest random), then ``--workers`` ``shoal detect`` workers drain it,
   once with ``detect.partials = false`` and once with partials on and ``shoal confirm`` running.
   Reported: flows/s end to end, the partials' volume against the flows topic's (messages and bytes),
   and the confirmation app's CPU per second of wall time while it keeps up.
2. Latency, confirmation on: flows offered at ``--rate`` for ``--seconds``, each stamped with its send
   time as its receipt (no flow end, so the receipt is the flow's time); a read_committed reader takes
   every detection version. A hit flow's latency is the time from its send to the first detection
   version of its (indicator, host, window) whose flow count includes it.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import json
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
from confluent_kafka import Consumer, KafkaException, TopicPartition

from benchmarks.bench_kafka import ROWS, free_port, proc_cpu, scrape_total, v4_column
from benchmarks.machine import machine_line
from detectors.detections import iso_ms
from pipeline.intel.load import IntelLoad
from pipeline.intel.model import Condition, Indicator
from pipeline.metrics import new_registry
from pipeline.schemas import FLOW_SCHEMA
from pipeline.sinks.kafka import KafkaSink
from pipeline.transport.config import load_streams_config
from pipeline.transport.indicators import publish
from pipeline.transport.topics import create_topics

ROOT = Path(__file__).resolve().parents[1]
CAMPUS = (0x64400000, 0x647FFFFF)  # 100.64.0.0/10


def make_batches(
    n: int, targets: np.ndarray, hosts: np.ndarray, share: float, pairs: int, rng: np.random.Generator
):
    """Flow batches without times, and per batch the hits as {(indicator index, host index): flows}.
    ``pairs`` > 0: hits come from that many (indicator, host) pairs (infected hosts beaconing to their
    C2s); 0: every hit picks an indicator and a host at random (aggregation's worst case)."""
    batches, hit_keys = [], []
    pair_ind = rng.integers(0, len(targets), pairs)
    pair_host = rng.integers(0, len(hosts), pairs)
    for b in range(n):
        src = rng.integers(*CAMPUS, ROWS, dtype=np.uint64)
        dst = rng.integers(0x01000000, 0xDF000000, ROWS, dtype=np.uint64)
        hit = np.flatnonzero(rng.random(ROWS) < share)
        if pairs:
            chosen = rng.integers(0, pairs, len(hit))
            ind, host = pair_ind[chosen], pair_host[chosen]
        else:
            ind, host = rng.integers(0, len(targets), len(hit)), rng.integers(0, len(hosts), len(hit))
        dst[hit], src[hit] = targets[ind], hosts[host]
        hit_keys.append(collections.Counter(zip(ind.tolist(), host.tolist(), strict=True)))
        cols: dict[str, pa.Array] = {}
        for field in FLOW_SCHEMA:
            if field.name in ("src_addr", "dst_addr"):
                cols[field.name] = v4_column(src if field.name == "src_addr" else dst)
            elif field.name == "exporter":
                cols[field.name] = v4_column(np.full(ROWS, 0x0A000001 + b % 16, dtype=np.uint64))
            elif field.name in ("flow_start", "flow_end", "next_hop"):
                cols[field.name] = pa.nulls(ROWS, field.type)
            elif pa.types.is_timestamp(field.type):
                cols[field.name] = pa.array(np.zeros(ROWS, np.int64)).view(field.type)
            elif field.name in ("src_port", "dst_port"):
                cols[field.name] = pa.array(rng.integers(1, 65535, ROWS).astype(np.uint16))
            elif field.name == "protocol":
                cols[field.name] = pa.array(np.full(ROWS, 6, np.uint8))
            elif field.name == "tcp_flags":
                cols[field.name] = pa.array(np.full(ROWS, 0x1B, np.uint16))  # a whole connection
            elif field.name == "packets":
                cols[field.name] = pa.array(np.full(ROWS, 12, np.uint64))
            else:
                cols[field.name] = pa.array(np.ones(ROWS, dtype=field.type.to_pandas_dtype()))
        batches.append(pa.RecordBatch.from_pydict(cols, schema=FLOW_SCHEMA))
    return batches, hit_keys


def stamped(batch: pa.RecordBatch, when: float) -> pa.RecordBatch:
    field = FLOW_SCHEMA.field("time_received")
    column = pa.array(np.full(batch.num_rows, int(when * 1e6), np.int64)).view(field.type)
    return batch.set_column(0, field, column)


def topic_volume(bootstrap: str, topic: str, timeout: float = 120) -> tuple[int, int]:
    """(messages, value bytes) committed on ``topic``, read to its end."""
    from pipeline.transport.indicators import assign_from_beginning

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "enable.auto.commit": False,
                         "isolation.level": "read_committed"})  # fmt: skip
    ends = {tp.partition: tp.offset for tp in assign_from_beginning(consumer, topic)}
    count = size = 0
    deadline, quiet = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and quiet < 6:
        messages = consumer.consume(num_messages=10_000, timeout=0.5)
        quiet = 0 if messages else quiet + 1
        for m in messages:
            if m.error() is None and not dict(m.headers() or []).get("shoal-tick"):
                count += 1
                size += len(m.value() or b"")
        if all(consumer.position([TopicPartition(topic, p)])[0].offset >= end for p, end in ends.items()):
            break
    consumer.close()
    return count, size


class DetectionReader(threading.Thread):
    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                                  "auto.offset.reset": "earliest", "isolation.level": "read_committed"})  # fmt: skip
        self.consumer.subscribe([topic])
        self.versions: dict[tuple, list[tuple[int, float]]] = collections.defaultdict(list)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for m in self.consumer.consume(num_messages=10_000, timeout=0.2):
                if m.error() is None and m.value():
                    d = json.loads(m.value())
                    if d["kind"] == "indicator":
                        key = (d["key"], d["internal_host"], d["window_start"])
                        self.versions[key].append((d["flows"], time.time()))
        self.consumer.close()


class Deployment:
    """Topics, intel and the running processes of one configuration."""

    def __init__(
        self, bootstrap: str, work: Path, args, load: IntelLoad, partials: bool, confirm: bool
    ) -> None:
        tag = uuid.uuid4().hex[:6]
        self.config = work / f"streams-{tag}.toml"
        self.config.write_text(
            f'[topics.flows]\nname = "b{tag}.flows"\npartitions = {args.partitions}\n'
            f'[topics.alerts]\nname = "b{tag}.alerts"\npartitions = {args.partitions}\n'
            f'[topics.indicators]\nname = "b{tag}.indicators"\n'
            f'[topics.partials]\nname = "b{tag}.partials"\npartitions = {args.partitions}\n'
            f'[topics.detections]\nname = "b{tag}.detections"\n[topics.feedback]\nname = "b{tag}.feedback"\n'
            f'[detect]\ngroup = "b{tag}"\npartials = {str(partials).lower()}\n[confirm]\ngroup = "c{tag}"\n'
        )
        self.detections = work / f"detections-{tag}.toml"
        self.detections.write_text(f'[detections]\nnetwork = "bench"\nemit_seconds = {args.emit_seconds}\n'
                                   '[constituency]\ncidrs = ["100.64.0.0/10"]\n')  # fmt: skip
        self.streams = load_streams_config(self.config)
        create_topics(bootstrap, self.streams.topics.all())
        for attempt in range(20):  # a new topic's leader takes a moment
            try:
                publish(bootstrap, self.streams.topics.indicators.name, [load])
                break
            except KafkaException:
                if attempt == 19:
                    raise
                time.sleep(0.5)
        self.bootstrap, self.args, self.confirm_wanted = bootstrap, args, confirm
        self.workers: list[tuple[subprocess.Popen, int]] = []
        self.confirm: subprocess.Popen | None = None

    def start(self) -> None:
        common = [
            "--kafka",
            self.bootstrap,
            "--config",
            str(self.config),
            "--detections",
            str(self.detections),
        ]
        if self.confirm_wanted:
            self.confirm = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "confirm", *common,
                                             "--instance-id", "c0"], cwd=ROOT, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
            self.confirm.stdout.readline()
        for w in range(self.args.workers):
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "detect", *common, "--instance-id", f"w{w}",
                                     "--metrics", f"127.0.0.1:{port}"], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)  # fmt: skip
            self.workers.append((proc, port))
        for proc, _ in self.workers:
            proc.stdout.readline()

    def matched(self) -> float:
        return sum(scrape_total(port, "shoal_matcher_flows_total") for _, port in self.workers)

    def cpu(self) -> dict[str, float]:
        out = {f"w{i}": proc_cpu(p.pid) for i, (p, _) in enumerate(self.workers)}
        if self.confirm is not None:
            out["confirm"] = proc_cpu(self.confirm.pid)
        return out

    def stop(self) -> None:
        procs = [p for p, _ in self.workers] + ([self.confirm] if self.confirm else [])
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)


def capacity(bootstrap: str, work: Path, args, load: IntelLoad, batches: list, confirm: bool) -> None:
    d = Deployment(bootstrap, work, args, load, partials=confirm, confirm=confirm)
    sink = KafkaSink(bootstrap, d.streams.topics.flows.name, new_registry(), {"linger.ms": 50})
    n = max(1, args.drain_flows // ROWS)
    for i in range(n):
        sink.write(stamped(batches[i % len(batches)], time.time()))
    sink.close()
    flows = n * ROWS
    try:
        d.start()
        cpu0, first, last = d.cpu(), None, None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            done, now = d.matched(), time.monotonic()
            if first is None and done > 0:
                first = (now, done)
            if done >= flows:
                last = now
                break
            time.sleep(0.02)
        if first is None or last is None or last <= first[0]:
            print(
                f"  confirmation {'on' if confirm else 'off'}: no drain measured (too few flows, or not finished)"
            )
            return
        cpu1 = d.cpu()
        rate = (flows - first[1]) / max(last - first[0], 1e-9)
        wall = last - first[0]
        line = (f"  confirmation {'on ' if confirm else 'off'}: {rate:,.0f} flows/s end to end ({flows:,} flows in "
                f"{wall:.1f} s); CPU s " + ", ".join(f"{k} {cpu1[k] - cpu0[k]:.1f}" for k in cpu1))  # fmt: skip
        if confirm:
            line += f" (confirm: {(cpu1['confirm'] - cpu0['confirm']) / wall:.2f} cores while draining)"
        print(line)
        if confirm:
            fm, fb = topic_volume(bootstrap, d.streams.topics.flows.name)
            pm, pb = topic_volume(bootstrap, d.streams.topics.partials.name)
            print(f"    partials: {pm:,} messages, {pb / 1e6:.2f} MB vs flows topic {fm:,} messages, {fb / 1e6:.1f} MB "
                  f"({100 * pb / fb:.2f}% of its bytes; {pb / flows:.2f} B per flow)")  # fmt: skip
    finally:
        d.stop()


def latency(bootstrap: str, work: Path, args, load: IntelLoad, batches: list, hit_keys: list) -> None:
    d = Deployment(bootstrap, work, args, load, partials=True, confirm=True)
    reader = DetectionReader(bootstrap, d.streams.topics.detections.name)
    sink = KafkaSink(bootstrap, d.streams.topics.flows.name, new_registry(), {"linger.ms": 5})
    sends: list[tuple[float, int]] = []  # (send time, batch index)
    try:
        d.start()
        reader.start()
        time.sleep(3)
        interval, start, sent = ROWS / args.rate, time.monotonic(), 0
        cpu0 = d.cpu()
        while time.monotonic() - start < args.seconds:
            with contextlib.suppress(ValueError):
                time.sleep(max(0.0, start + sent * interval - time.monotonic()))
            now = time.time()
            sink.write(stamped(batches[sent % len(batches)], now))
            sends.append((now, sent % len(batches)))
            sent += 1
        sink.close()
        offered = time.monotonic() - start
        time.sleep(args.emit_seconds + 10)
        cpu1 = d.cpu()
    finally:
        reader.stop.set()
        d.stop()
    # Each hit flow: the first version of its detection whose count includes it.
    window_ms = 300_000
    cumulative: dict[tuple, int] = collections.Counter()
    latencies, weights, missing = [], [], 0
    targets = {i: f"bench-{i}" for i in range(args.indicators)}
    for when, b in sends:
        ms = int(when * 1e6) // 1000
        window = ms - ms % window_ms
        iso = iso_ms(window)
        for (ind, host), count in hit_keys[b].items():
            key = (targets[ind], HOST_TEXT[host], iso)
            cumulative[key] += count
            versions = reader.versions.get(key, [])
            pos = bisect.bisect_left([f for f, _ in versions], cumulative[key])
            if pos == len(versions):
                missing += count
                continue
            latencies.append(versions[pos][1] - when)
            weights.append(count)
    lat, w = np.array(latencies), np.array(weights)
    order = np.argsort(lat)
    cum = np.cumsum(w[order]) / max(w.sum(), 1)

    def pct(p: float) -> float:
        return float(lat[order][np.searchsorted(cum, p / 100)]) if len(lat) else float("nan")

    hits = int(w.sum()) + missing
    print(f"latency: offered {sent * ROWS:,} flows at {sent * ROWS / offered:,.0f} flows/s for {offered:.1f} s, "
          f"{hits:,} hits; emit step {args.emit_seconds} s")  # fmt: skip
    print(f"  flow sent -> its detection version readable: p50 {pct(50):.2f} s, p99 {pct(99):.2f} s, "
          f"max {lat.max() if len(lat) else float('nan'):.2f} s; {missing:,} hit flows never seen in a version")  # fmt: skip
    print(
        "  CPU s: "
        + ", ".join(f"{k} {cpu1[k] - cpu0[k]:.1f}" for k in cpu1)
        + f" over {offered:.1f} s offered"
    )


HOST_TEXT: list[str] = []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--drain-flows", type=int, default=4_000_000)
    ap.add_argument("--hit-share", type=float, default=0.01)
    ap.add_argument("--indicators", type=int, default=1000)
    ap.add_argument("--hosts", type=int, default=500)
    ap.add_argument(
        "--pairs",
        type=int,
        default=200,
        help="(indicator, host) pairs the hits come from; 0: every hit picks both at random",
    )
    ap.add_argument("--rate", type=float, default=200_000)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--emit-seconds", type=float, default=10)
    ap.add_argument("--skip-capacity", action="store_true")
    args = ap.parse_args()
    import ipaddress

    rng = np.random.default_rng(5)
    print(machine_line())
    targets = rng.choice(np.arange(0x01000000, 0x60000000, dtype=np.uint64), args.indicators, replace=False)
    hosts = rng.choice(np.arange(CAMPUS[0], CAMPUS[1], dtype=np.uint64), args.hosts, replace=False)
    HOST_TEXT.extend(str(ipaddress.IPv4Address(int(h))) for h in hosts)
    load = IntelLoad("bench-intel")
    for n, t in enumerate(targets.tolist()):
        net = ipaddress.IPv4Network(t)
        load.indicators.append(Indicator(f"bench-{n}", str(net.network_address), "bench", (Condition(network=net),),
                                         confidence=80))  # fmt: skip
    batches, hit_keys = make_batches(64, targets, hosts, args.hit_share, args.pairs, rng)
    work = Path(tempfile.mkdtemp(prefix="shoal-bench-confirm-"))
    env = {k: v for k, v in os.environ.items() if k != "SHOAL_KAFKA_DIR"}
    env |= {"SHOAL_KAFKA_DIR": str(work / "broker"), "PYTHON": sys.executable}
    bootstrap = subprocess.run([str(ROOT / "scripts" / "kafka.sh"), "start"], env=env, capture_output=True, text=True,
                               check=True).stdout.strip().splitlines()[-1]  # fmt: skip
    try:
        spread = (
            f"{args.pairs} (indicator, host) pairs"
            if args.pairs
            else f"any of {args.hosts} hosts to any indicator"
        )
        print(f"broker at {bootstrap}; {args.workers} workers, {args.partitions} partitions, {args.indicators:,} "
              f"indicators, {args.hit_share:.1%} of flows hit, from {spread}")  # fmt: skip
        if not args.skip_capacity:
            print(f"capacity ({args.drain_flows:,} flows pre-loaded, drained by the workers):")
            capacity(bootstrap, work, args, load, batches, confirm=False)
            capacity(bootstrap, work, args, load, batches, confirm=True)
        latency(bootstrap, work, args, load, batches, hit_keys)
    finally:
        subprocess.run([str(ROOT / "scripts" / "kafka.sh"), "stop"], env=env, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
