"""Two networks, one loop: how long from network A's confirming flow to network B's first alert.

    .venv/bin/python -m benchmarks.bench_share_loop [--rounds 10]

One fresh broker (scripts/kafka.sh) and one medallion TAXII server; network A runs a matcher worker,
the confirmation app (emit step 0.5 s) and the sharer (TAXII destination); network B runs
`shoal intel sync` every 2 s from the shared collection and a matcher worker (the deployment of
tests/kafka/two_networks.py, the two-networks test's). Each round a new scanner (never seen before)
probes 80 of A's hosts: its flows are produced to A's flows topic at t0, while B's flows topic
receives the same scanner's probes of B's hosts every 0.25 s; the round ends at the first committed
alert on that scanner at B (t1). Reported: t1 - t0 per round, p50, p99, max.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "kafka")]

from conftest import MedallionServer  # noqa: E402
from kafka_helpers import reader  # noqa: E402
from test_kafka_detect import produce_batches  # noqa: E402
from two_networks import SCANNER, TwoNetworks, current_demo_batch, scanner_flows_at_b  # noqa: E402

from benchmarks.machine import machine_line  # noqa: E402
from pipeline.schemas import ip_to_bytes16  # noqa: E402


def with_scanner(batch: pa.RecordBatch, scanner: str) -> pa.RecordBatch:
    """Only the demo scanner's flows, from ``scanner`` instead."""
    kind = batch.schema.field("src_addr").type
    mine = batch.filter(pc.equal(batch.column("src_addr"), pa.scalar(ip_to_bytes16(SCANNER), kind)))
    src = pa.array([ip_to_bytes16(scanner)] * mine.num_rows, type=kind)
    return mine.set_column(mine.schema.get_field_index("src_addr"), mine.schema.field("src_addr"), src)


def one_round(nets: TwoNetworks, bootstrap: str, scanner: str, timeout: float = 60) -> float:
    consumer = reader(bootstrap, nets.b["alerts"])
    try:
        consumer.consume(500, timeout=1.0)  # joined and positioned before the clock starts
        t0 = time.time()
        produce_batches(bootstrap, nets.a["flows"], [with_scanner(current_demo_batch(), scanner)])
        next_feed = 0.0
        while time.time() - t0 < timeout:
            if time.time() >= next_feed:
                produce_batches(bootstrap, nets.b["flows"], [with_scanner(scanner_flows_at_b(), scanner)])
                next_feed = time.time() + 0.25
            for msg in consumer.consume(500, timeout=0.05):
                if msg.error() is None and json.loads(msg.value())["src_addr"] == scanner:
                    return time.time() - t0
    finally:
        consumer.close()
    raise RuntimeError(f"no alert at B on {scanner} within {timeout:g} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    print(machine_line())
    work = Path(tempfile.mkdtemp(prefix="shoal-bench-share-"))
    env = {k: v for k, v in os.environ.items() if k != "SHOAL_KAFKA_DIR"}
    env |= {"SHOAL_KAFKA_DIR": str(work / "broker"), "PYTHON": sys.executable}
    bootstrap = subprocess.run([str(ROOT / "scripts" / "kafka.sh"), "start"], env=env, capture_output=True, text=True,
                               check=True).stdout.strip().splitlines()[-1]  # fmt: skip
    (work / "taxii").mkdir()
    taxii = MedallionServer(work / "taxii")
    taxii.start()
    nets = TwoNetworks(bootstrap, work, taxii.url)
    try:
        nets.start()
        one_round(nets, bootstrap, "198.51.100.129", timeout=120)  # warm-up: every process up and assigned
        times = []
        for i in range(args.rounds):
            times.append(one_round(nets, bootstrap, f"198.51.100.{130 + i}"))
            print(f"  round {i + 1}: A's confirming flows -> B's first alert {times[-1]:.2f} s", flush=True)
        t = np.array(times)
        print(f"{len(t)} rounds, B's intel sync every 2 s: p50 {np.percentile(t, 50):.2f} s, "
              f"p99 {np.percentile(t, 99):.2f} s, max {t.max():.2f} s (goal p99 <= 10 s)")  # fmt: skip
    finally:
        nets.stop()
        taxii.stop()
        subprocess.run([str(ROOT / "scripts" / "kafka.sh"), "stop"], env=env, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
