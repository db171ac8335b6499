"""What spoofed and junk input costs the decoder (issue 15, items 3 and 4): memory held by templates
and data-before-template buffers from many spoofed sources, the state file and its restore, metric
series from many observation domains, and CPU for 64 KB IPFIX datagrams of 1-byte variable-length
records. Each case runs in a fresh process so its resident-memory growth is its own.

``--tree DIR`` runs the cases against another checkout's ``pipeline`` package (e.g. the code before a
change, from ``git archive``), so before/after figures come from the same script:

    .venv/bin/python -m benchmarks.bench_hostile
    mkdir /tmp/old && git archive OLD pipeline | tar -x -C /tmp/old
    .venv/bin/python -m benchmarks.bench_hostile --tree /tmp/old
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPORT = 1_800_000_000


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _ipfix(body: bytes, domain: int = 1, seq: int = 0) -> bytes:
    return struct.pack("!HHIII", 10, 16 + len(body), EXPORT, seq, domain) + body


def _template(tid: int, fields: int) -> bytes:
    spec = b"".join(struct.pack("!HH", ie, n) for ie, n in [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1)])
    spec += b"".join(struct.pack("!HH", 200 + i % 50, 4) for i in range(fields - 5))
    body = struct.pack("!HH", tid, fields) + spec
    return struct.pack("!HH", 2, 4 + len(body)) + body


def _spoofed(i: int) -> str:
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


def case_templates(sources: int) -> dict:
    """One 60-field template from each of ``sources`` spoofed addresses, then save and restore."""
    from pipeline.decode import Datagram, FlowDecoder

    decoder = FlowDecoder()
    packet = _ipfix(_template(300, 60))
    base = _rss_mb()
    for start in range(0, sources, 1000):
        decoder.decode(
            [Datagram(packet, _spoofed(i), 4739, EXPORT + i / 1000) for i in range(start, start + 1000)]
        )
    held = _rss_mb() - base
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        decoder.save_state(state)
        size = state.stat().st_size
        t0 = time.perf_counter()
        FlowDecoder().load_state(state)
        restore = time.perf_counter() - t0
    templates = sum(len(t) for t in decoder._templates.values())
    return {"rss_mb": held, "templates": templates, "state_mb": size / 2**20, "restore_s": restore}


def case_pending(sources: int) -> dict:
    """A 1,400-byte data set whose template never comes, from each of ``sources`` spoofed addresses
    (what a flood of data-before-template looks like)."""
    from pipeline.decode import Datagram, FlowDecoder

    decoder = FlowDecoder()
    base = _rss_mb()
    body = struct.pack("!HH", 999, 4 + 1400) + os.urandom(1400)
    for start in range(0, sources, 1000):
        decoder.decode(
            [
                Datagram(_ipfix(body, seq=i), _spoofed(i), 4739, EXPORT + i / 1000)
                for i in range(start, start + 1000)
            ]
        )
    return {"rss_mb": _rss_mb() - base, "buffered_sets": sum(decoder.stats.pending_buffered.values())}


def case_domains(domains: int) -> dict:
    """``domains`` observation domains of one exporter, each with a sequence gap: metric series."""
    from prometheus_client import CollectorRegistry

    from pipeline.collector.metrics import CollectorMetrics
    from pipeline.decode import Datagram, FlowDecoder

    decoder = FlowDecoder()
    tset = _template(300, 5)
    for d in range(domains):
        decoder.decode([Datagram(_ipfix(tset, d, 0), "192.0.2.1", 4739, EXPORT),
                        Datagram(_ipfix(tset, d, 5), "192.0.2.1", 4739, EXPORT)])  # fmt: skip
    registry = CollectorRegistry()
    metrics = CollectorMetrics(registry)
    metrics.attach([], [], decoder, None)
    metrics.refresh()
    series = sum(len(f.samples) for f in registry.collect() if f.name.startswith("shoal_decoder"))
    return {"decoder_series": series}


def case_junk(datagrams: int, with_addresses: bool) -> dict:
    """64 KB IPFIX datagrams of variable-length records: 1-byte records (an empty interfaceName), or
    9-byte ones that also carry addresses; CPU per datagram and flows produced."""
    from pipeline.decode import Datagram, FlowDecoder

    fields = [(82, 65535)] if not with_addresses else [(8, 4), (12, 4), (82, 65535)]
    spec = b"".join(struct.pack("!HH", ie, n) for ie, n in fields)
    tset = struct.pack("!HHHH", 2, 8 + len(spec), 500, len(fields)) + spec
    record = b"\x00" if not with_addresses else bytes([198, 51, 100, 1, 203, 0, 113, 1, 0])
    room = 65_000 - len(tset) - 20
    records = record * (room // len(record))
    packet = _ipfix(tset + struct.pack("!HH", 500, 4 + len(records)) + records)
    FlowDecoder().decode([Datagram(packet, "10.9.9.8", 4739, EXPORT)])  # warm-up: imports, compiled walk
    decoder = FlowDecoder()
    rows = 0
    t0 = time.process_time()
    for i in range(datagrams):
        rows += decoder.decode([Datagram(packet, "10.9.9.9", 4739, EXPORT + i * 0.1)]).num_rows
    cpu = time.process_time() - t0
    return {
        "cpu_ms_per_datagram": 1000 * cpu / datagrams,
        "rows": rows,
        "records_sent": datagrams * (room // len(record)),
    }


CASES = {
    "templates": lambda: case_templates(20_000),
    "pending": lambda: case_pending(20_000),
    "domains": lambda: case_domains(10_000),
    "junk": lambda: case_junk(20, with_addresses=False),
    "junk_addressed": lambda: case_junk(20, with_addresses=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tree", help="directory holding the pipeline package to measure (default: this one)"
    )
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(CASES[args.case]()))
        return
    from benchmarks.machine import machine_line

    tree = Path(args.tree).resolve() if args.tree else ROOT
    print(machine_line())
    print(f"pipeline from {tree}")
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{ROOT}"}
    for name in CASES:
        res = subprocess.run([sys.executable, "-m", "benchmarks.bench_hostile", "--case", name], cwd=tree,
                             env=env, capture_output=True, text=True, check=False)  # fmt: skip
        result = json.loads(res.stdout.splitlines()[-1]) if res.returncode == 0 else res.stderr.strip()[-300:]
        print(f"{name:16} {result}")


if __name__ == "__main__":
    main()
