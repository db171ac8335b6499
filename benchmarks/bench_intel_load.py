"""Intel at scale: a list, a CSV file (and the indicators topic, ``--kafka``) of millions of
indicators loaded to an active index; a 1k-indicator update to a running 10M index; ``find`` at 10M
with the update's delta present. Each case runs in a fresh process, so its peak RSS (ru_maxrss) is
its own; figures are wall and CPU seconds of the whole load (read, parse, account, build).

With ``--kafka BOOTSTRAP`` (``scripts/kafka.sh start``): the 10M list published to a new topic (the
real ``publish``: load, read the topic, compare, send), a fresh worker's start on it (read the topic,
build), then ``--rounds`` updates of 1,000 withdrawn + 1,000 added lines published to a running
worker: from the publish's last delivery to the worker's swap (both clocks of this machine).

    .venv/bin/python -m benchmarks.bench_intel_load [--size 10000000] [--cases list,csv,update,plain]
    .venv/bin/python -m benchmarks.bench_intel_load --cases none --kafka $(scripts/kafka.sh status)
    mkdir /tmp/old && git archive OLD pipeline detectors | tar -x -C /tmp/old
    .venv/bin/python -m benchmarks.bench_intel_load --tree /tmp/old --cases plain --plain-mb 20

Lists mix IPv4 addresses (1 in 7 a CIDR /24-/30, 1 in 10 with ``|port``) and IPv6 (1 in 10, some
/48), as ``bench_match.py``'s sets; the CSV has the same values in a column of four. ``plain``: the
shape of issue 15's large lists, one IPv4 address per line (20 MB = 1.4M lines).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SHOAL_BENCH_DATA", "/tmp/shoal-bench-intel"))


def _entries(n: int, seed: int = 3) -> list[str]:
    """``n`` mixed entries (vectorised draws; the text is made per line, once, by the parent); IPv6
    ones are numbered from ``seed``, so chunks of a large file do not repeat them."""
    rng = np.random.default_rng(seed)
    v4 = rng.integers(1 << 24, 224 << 24, n, dtype=np.uint64)
    prefix = rng.integers(24, 31, n)
    port = rng.integers(1, 65535, n)
    out = []
    for k in range(n):
        if k % 10 == 9:
            g = seed + k
            out.append(
                f"2001:db8:{g >> 16 & 0xFFFF:x}:{g & 0xFFFF:x}::{g % 977:x}" + ("" if k % 20 else "/48")
            )
            continue
        a = int(v4[k])
        text = f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}"
        if k % 7 == 0:
            text += f"/{prefix[k]}"
        if k % 10 == 3:
            text += f"|{port[k]}"
        out.append(text)
    return out


def make_list(n: int) -> Path:
    path = DATA / f"list-{n}-v2.txt"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        with path.open("w") as fh:
            for start in range(0, n, 1_000_000):
                fh.write("\n".join(_entries(min(n - start, 1_000_000), seed=start)) + "\n")
    return path


def make_csv(n: int) -> Path:
    path = DATA / f"feed-{n}-v2.csv"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        with path.open("w") as fh:
            fh.write("first_seen,ip,port,comment\n")
            for start in range(0, n, 1_000_000):
                rows = []
                for text in _entries(min(n - start, 1_000_000), seed=start):
                    value, _, port = text.partition("|")
                    rows.append(f"2026-01-01,{value},{port},c2")
                fh.write("\n".join(rows) + "\n")
    return path


def make_plain(megabytes: int) -> Path:
    """One random IPv4 address per line, ``megabytes`` MB."""
    path = DATA / f"plain-{megabytes}mb.txt"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(15)
        with path.open("w") as fh:
            while fh.tell() < megabytes * 1_000_000:
                a = rng.integers(1 << 24, 224 << 24, 100_000, dtype=np.uint64)
                fh.write("".join(f"{x >> 24}.{x >> 16 & 255}.{x >> 8 & 255}.{x & 255}\n" for x in a.tolist()))
    return path


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _index(spec: str):
    """Load one source to an index, with whichever API the code under test has."""
    from detectors.index import IndicatorIndex
    from pipeline.intel import load_source

    load = load_source(spec)
    if hasattr(IndicatorIndex, "from_loads"):
        return load, IndicatorIndex.from_loads([load])
    return load, IndicatorIndex.build(load.indicators)


def child_load(spec: str) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    load, index = _index(spec)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    count = index.count if hasattr(index, "count") else len(index.indicators)
    return {"wall_s": wall, "cpu_s": cpu, "peak_gib": _peak_gib(), "indicators": count,
            "errors": len(load.errors), "duplicates": load.duplicates}  # fmt: skip


def _flows(n: int, index, rng: np.random.Generator):
    """``n`` flows of random IPv4 addresses, ~1% aimed at indexed networks."""
    import pyarrow as pa

    from pipeline.schemas import FLOW_SCHEMA

    addrs = np.zeros((2 * n, 16), dtype=np.uint8)
    addrs[:, 10:12] = 0xFF
    addrs[:, 12:] = rng.integers(0, 256, (2 * n, 4), dtype=np.uint8)
    ids = index.attributes.column("indicator").combine_chunks()
    hot = rng.choice(2 * n, 2 * n // 100, replace=False)
    picks = rng.choice(len(ids), len(hot))
    for row, k in zip(hot.tolist(), picks.tolist(), strict=True):
        text = ids[k].as_py().partition("|")[0]
        raw = ipaddress.ip_network(text, strict=False).network_address.packed
        addrs[row] = np.frombuffer(raw if len(raw) == 16 else bytes(10) + b"\xff\xff" + raw, np.uint8)
    cols = {}
    for f in FLOW_SCHEMA:
        if f.name in ("src_addr", "dst_addr"):
            part = addrs[:n] if f.name == "src_addr" else addrs[n:]
            cols[f.name] = pa.Array.from_buffers(
                pa.binary(16), n, [None, pa.py_buffer(np.ascontiguousarray(part))]
            )
        elif pa.types.is_timestamp(f.type):
            cols[f.name] = pa.array(np.full(n, 1_790_000_000_000_000, "datetime64[us]"), type=f.type)
        elif f.type == pa.binary(16):
            cols[f.name] = pa.nulls(n, f.type) if f.nullable else pa.array([bytes(16)] * n, f.type)
        elif f.name == "dst_port":
            cols[f.name] = pa.array(rng.integers(0, 65535, n, dtype=np.uint16))
        else:
            cols[f.name] = pa.array(np.zeros(n, dtype=f.type.to_pandas_dtype()), type=f.type)
    return pa.RecordBatch.from_arrays([cols[f.name] for f in FLOW_SCHEMA], schema=FLOW_SCHEMA)


def _find_rate(matcher, batch, repeat: int) -> tuple[float, float, float, int]:
    """(median, min, max) M lookups/s per core of ``find`` over ``batch``, and its hits."""
    times, hits = [], 0
    for _ in range(repeat):
        c0 = time.process_time()
        hits = len(matcher.find(batch).rows)
        times.append(time.process_time() - c0)
    n = 2 * batch.num_rows / 1e6
    return n / statistics.median(times), n / max(times), n / min(times), hits


def child_update(spec: str, changes: int, flows: int, repeat: int) -> dict:
    """Load ``spec``, then apply ``changes`` withdrawals + ``changes`` additions as a layered index,
    ``repeat`` times (each on the last: the delta grows), and time ``find`` with the delta."""
    from detectors.layers import LayeredIndex
    from detectors.matcher import Matcher
    from pipeline.intel.table import IndicatorTable, mapped_v4

    _, main = _index(spec)
    rng = np.random.default_rng(7)
    batch = _flows(flows, main, rng)
    matcher = Matcher(main)
    matcher.find(batch.slice(0, 10_000))
    base = _find_rate(matcher, batch, repeat)
    t0 = time.perf_counter()
    layered = LayeredIndex.of(main)
    layered.ids()
    id_lookup = time.perf_counter() - t0
    ids = main.attributes.column("indicator_id")
    latencies = []
    for round_no in range(repeat):
        gone = ids.take(rng.choice(main.count, changes, replace=False)).to_pylist()
        new_v4 = rng.integers(1 << 24, 224 << 24, changes, dtype=np.uint64).astype(np.uint32)
        import pyarrow as pa

        texts = [f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}" for a in new_v4.tolist()]
        table = IndicatorTable.from_columns(
            mapped_v4(new_v4), np.full(changes, 32), np.full(changes, 4), np.full(changes, -1),
            values=pa.array(texts), source="update", id_prefix=f"update{round_no}:",
        )  # fmt: skip
        t0 = time.perf_counter()
        layered = layered.updated(gone, (), table)
        matcher = Matcher(layered)  # what MatcherHandle.swap does
        latencies.append(time.perf_counter() - t0)
    matcher.find(batch.slice(0, 10_000))
    layered_rate = _find_rate(matcher, batch, repeat)
    return {"peak_gib": _peak_gib(), "indicators": main.count, "id_lookup_s": id_lookup,
            "update_s": latencies, "delta": layered.delta.count, "withdrawn": len(layered.removed),
            "find_main": base, "find_layered": layered_rate}  # fmt: skip


def make_update(src: Path, dst: Path, changes: int, round_no: int) -> None:
    """``src`` less ``changes`` random lines, plus ``changes`` new addresses (100.64/10, by round)."""
    rng = np.random.default_rng(100 + round_no)
    lines = sum(1 for _ in src.open("rb"))
    gone = set(rng.choice(lines, changes, replace=False).tolist())
    with src.open("rb") as fh, dst.open("wb") as out:
        for k, line in enumerate(fh):
            if k not in gone:
                out.write(line)
        base = (100 << 24) | (64 << 16) | (round_no << 12)
        out.write("".join(f"{(base + k) >> 24}.{(base + k) >> 16 & 255}.{(base + k) >> 8 & 255}.{(base + k) & 255}\n"
                          for k in range(changes)).encode())  # fmt: skip


def child_publish(bootstrap: str, topic: str, spec: str) -> dict:
    """``shoal intel publish`` of one source, as a sync round does it: load, read the topic, compare, send."""
    from pipeline.intel import load_source
    from pipeline.transport.indicators import publish

    t0, c0 = time.perf_counter(), time.process_time()
    load = load_source(spec)
    loaded = time.perf_counter() - t0
    (report,) = publish(bootstrap, topic, [load])
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "peak_gib": _peak_gib(),
            "load_s": loaded, "done_at": time.time(), "mode": report.mode, "messages": report.messages,
            "bytes": report.bytes, "new": report.new, "withdrawn": report.withdrawn,
            "unchanged": report.unchanged}  # fmt: skip


def child_topic(bootstrap: str, topic: str) -> dict:
    """What a worker's start costs: the topic read to its end, its chunks built into the index."""
    from prometheus_client import CollectorRegistry

    from pipeline.runtime.intel_follower import IntelFollower

    t0, c0 = time.perf_counter(), time.process_time()
    follower = IntelFollower(bootstrap, topic, CollectorRegistry())
    follower.start(timeout=600)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    follower.stop()
    read = follower.build_seconds.collect()[0].samples  # the build's own time, from its histogram
    build = next(x.value for x in read if x.name.endswith("_sum"))
    return {"wall_s": wall, "cpu_s": cpu, "peak_gib": _peak_gib(), "indicators": follower.index.count,
            "errors": follower.state.error_count, "duplicates": 0, "build_s": build,
            "chunks": sum(len(m.chunks) for m in follower.state.manifests.values())}  # fmt: skip


def child_follow(bootstrap: str, topic: str, rounds: int, flows: int, repeat: int) -> None:
    """A running worker: one JSON line when its index is active, then one per index swap (when,
    what it holds), then ``find`` with the delta in place."""
    from prometheus_client import CollectorRegistry

    from pipeline.runtime.intel_follower import IntelFollower

    follower = IntelFollower(bootstrap, topic, CollectorRegistry())
    follower.start(timeout=600)
    print(json.dumps({"ready": time.time(), "indicators": follower.index.count}), flush=True)
    seen = follower.index
    for _ in range(rounds):
        while follower.index is seen:
            time.sleep(0.002)
        seen = follower.index
        print(json.dumps({"active_at": time.time(), "indicators": seen.count, "pending": seen.pending,
                          "delta": seen.delta.count, "withdrawn": len(seen.removed)}), flush=True)  # fmt: skip
    matcher = follower.handle.matcher
    batch = _flows(flows, seen.main, np.random.default_rng(7))
    matcher.find(batch.slice(0, 10_000))
    rate = _find_rate(matcher, batch, repeat)
    follower.stop()
    print(json.dumps({"find_layered": rate, "peak_gib": _peak_gib()}), flush=True)


def topic_cases(args: argparse.Namespace) -> None:
    """10M indicators published to a fresh topic, a fresh worker's start on it, then ``--rounds``
    1k updates published to a running worker (publish -> active)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": args.kafka})
    topic = f"bench.indicators.{args.topic_size}.{int(time.time())}"
    for future in admin.create_topics([NewTopic(topic, 1, 1, config={"cleanup.policy": "compact"})]).values():
        future.result(30)
    path = DATA / "topic-feed.txt"  # the feed's name is its path: updates rewrite this file
    shutil.copyfile(make_list(args.topic_size), path)
    try:
        r = run_child(["publish", args.kafka, topic, str(path)], None)
        print(f"publish {args.topic_size:,} lines to a new topic: " + (f"FAILED {r}" if "failed" in r else (
            f"{r['wall_s']:.1f} s wall ({r['load_s']:.1f} s loading the list), {r['cpu_s']:.1f} CPU-s, peak RSS "
            f"{r['peak_gib']:.2f} GiB; {r['messages']} messages, {r['bytes'] / 1e6:.0f} MB")))  # fmt: skip
        r = run_child(["topic", args.kafka, topic], None)
        print(f"worker start on it (fresh process) -> active index: {_fmt(r)}"
              + ("" if "failed" in r else f"; {r['chunks']} chunks, of which the build {r['build_s']:.1f} s"))  # fmt: skip
        worker = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_intel_load", "--child", "follow", args.kafka,
                                   topic, str(args.rounds), str(args.flows), str(args.repeat)],
                                  cwd=ROOT, stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert worker.stdout is not None
        ready = json.loads(worker.stdout.readline())
        latencies, totals = [], []
        for round_no in range(args.rounds):
            update = DATA / "topic-feed.next"
            make_update(path, update, args.changes, round_no)
            update.replace(path)
            started = time.time()
            r = run_child(["publish", args.kafka, topic, str(path)], None)
            active = json.loads(worker.stdout.readline())
            latencies.append(active["active_at"] - r["done_at"])
            totals.append(active["active_at"] - started)
            print(f"  update {round_no + 1}: publish {r['mode']} ({r['new']:,} new, {r['withdrawn']:,} withdrawn, "
                  f"{r['messages']} messages, {r['bytes'] / 1e3:.0f} kB) {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} "
                  f"CPU-s, peak {r['peak_gib']:.2f} GiB; delivered -> active in the worker "
                  f"{latencies[-1] * 1e3:.0f} ms (delta {active['delta']:,}, withdrawn {active['withdrawn']:,})")  # fmt: skip
        final = json.loads(worker.stdout.readline())
        worker.wait(60)
        med, low, high, hits = final["find_layered"]
        print(f"1k update through the topic to a running {ready['indicators']:,}-indicator worker: delivered -> "
              f"active {statistics.median(latencies) * 1e3:.0f} ms median (max {max(latencies) * 1e3:.0f}); from "
              f"the publish's start {statistics.median(totals):.1f} s median\n"
              f"  find in that worker, with the delta: {med:.1f} M lookups/s per core (median of {args.repeat}, min "
              f"{low:.1f}, max {high:.1f}; {args.flows:,} flows, {hits:,} hits); worker peak RSS {final['peak_gib']:.2f} GiB")  # fmt: skip
    finally:
        for future in admin.delete_topics([topic]).values():
            future.result(30)


def run_child(args: list[str], tree: str | None) -> dict:
    env = dict(os.environ)
    if tree:
        env["SHOAL_BENCH_TREE"] = tree
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_intel_load", "--child", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode:
        return {"failed": proc.returncode, "stderr": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=10_000_000, help="indicators in the list and CSV cases")
    parser.add_argument("--cases", default="list,csv,update,plain")
    parser.add_argument("--plain-mb", default="20,200", help="sizes of the plain lists, MB")
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--kafka", metavar="BOOTSTRAP", help="a broker for the topic case (scripts/kafka.sh start)"
    )
    parser.add_argument(
        "--topic-size", type=int, default=10_000_000, help="list lines published to the topic"
    )
    parser.add_argument("--rounds", type=int, default=5, help="1k updates published to the running worker")
    parser.add_argument("--tree", help="run against another checkout's pipeline and detectors packages")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if os.environ.get("SHOAL_BENCH_TREE"):  # ahead of the working directory, which -m puts first
            sys.path.insert(0, os.environ["SHOAL_BENCH_TREE"])
        kind, *rest = args.child
        if kind == "load":
            print(json.dumps(child_load(rest[0])))
        elif kind == "topic":
            print(json.dumps(child_topic(rest[0], rest[1])))
        elif kind == "publish":
            print(json.dumps(child_publish(rest[0], rest[1], rest[2])))
        elif kind == "follow":
            child_follow(rest[0], rest[1], int(rest[2]), int(rest[3]), int(rest[4]))
        elif kind == "update":
            print(json.dumps(child_update(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))))
        return
    from benchmarks.machine import machine_line

    print(machine_line())
    print(f"code: {args.tree or ROOT}")
    cases = args.cases.split(",")
    if "list" in cases:
        path = make_list(args.size)
        r = run_child(["load", str(path)], args.tree)
        print(f"list {args.size:,} lines ({path.stat().st_size / 1e6:.0f} MB) -> active index: {_fmt(r)}")
    if "csv" in cases:
        path = make_csv(args.size)
        r = run_child(["load", f"csv:{path}:ip:port"], args.tree)
        print(f"CSV {args.size:,} rows ({path.stat().st_size / 1e6:.0f} MB) -> active index: {_fmt(r)}")
    if "plain" in cases:
        for mb in (int(x) for x in args.plain_mb.split(",")):
            path = make_plain(mb)
            lines = sum(1 for _ in path.open("rb"))
            r = run_child(["load", str(path)], args.tree)
            print(f"plain list {mb} MB ({lines:,} IPv4 addresses) -> active index: {_fmt(r)}")
    if args.kafka:
        topic_cases(args)
    if "update" in cases:
        path = make_list(args.size)
        r = run_child(["update", str(path), str(args.changes), str(args.flows), str(args.repeat)], args.tree)
        if "failed" in r:
            print(f"update: FAILED {r}")
        else:
            lat = r["update_s"]
            print(f"update of {args.changes:,} withdrawn + {args.changes:,} added to a {r['indicators']:,}-indicator "
                  f"index: active in {statistics.median(lat) * 1e3:.0f} ms median "
                  f"({', '.join(f'{x * 1e3:.0f}' for x in lat)} ms over {len(lat)} successive updates; delta "
                  f"{r['delta']:,}, withdrawn {r['withdrawn']:,}); id lookup made once after a build: "
                  f"{r['id_lookup_s']:.1f} s")  # fmt: skip
            for name, key in (("main index alone", "find_main"), ("with the delta", "find_layered")):
                med, low, high, hits = r[key]
                print(f"  find at {r['indicators'] / 1e6:.0f}M, {name}: {med:.1f} M lookups/s per core "
                      f"(median of {args.repeat}, min {low:.1f}, max {high:.1f}; {args.flows:,} flows, {hits:,} hits)")  # fmt: skip
            print(f"  peak RSS {r['peak_gib']:.2f} GiB")


def _fmt(r: dict) -> str:
    if "failed" in r:
        return f"FAILED {r}"
    return (f"{r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} CPU-s, peak RSS {r['peak_gib']:.2f} GiB; "
            f"{r['indicators']:,} indicators, {r['errors']:,} errors, {r['duplicates']:,} duplicates collapsed")  # fmt: skip


if __name__ == "__main__":
    main()
