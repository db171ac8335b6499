"""Two Shoal deployments on one broker sharing one TAXII collection ("network A" and "network B"):
A's workers, confirmation app and sharer; B's intel sync (every 2 s) and worker. Used by the
two-networks test and by benchmarks/bench_share_loop.py."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from demo_reference import free_port
from kafka_helpers import ROOT, demo_batch, setup_topics, shoal, start_worker, stop, streams_config

from pipeline.samples import DEMO_DETECTIONS
from pipeline.schemas import ip_to_bytes16

SCANNER = "203.0.113.200"  # the demo traffic's scanner (scripts/make_samples.py)
A_CONSTITUENCY = ("192.0.2.0/24", "2001:db8:c0::/48")  # the demo campus
B_NETWORK = "198.18.0."  # B's own hosts


def detections_file(tmp: Path) -> Path:
    path = tmp / "a-detections.toml"
    path.write_text(DEMO_DETECTIONS.read_text().replace("emit_seconds = 2", "emit_seconds = 0.5"))
    return path


def policy_file(tmp: Path, taxii_url: str) -> Path:
    path = tmp / "a-sharing.toml"
    path.write_text(
        f"""
[identity]
name = "Network A CERT"
[constituency]
cidrs = {list(A_CONSTITUENCY)!r}
[[destinations]]
name = "trust-group"
type = "taxii"
url = "{taxii_url}"
user_env = "SHOAL_TAXII_USER"
secret_env = "SHOAL_TAXII_PASSWORD"
kinds = ["sightings", "indicators"]
tlp_ceiling = "green"
""".replace("'", '"')
    )
    return path


def current_demo_batch() -> pa.RecordBatch:
    """The bundled sample traffic as if it happened just now (its flows end now): live traffic,
    whose detections are recent enough to share."""
    batch = demo_batch(datetime.now(UTC))
    shift = datetime.now(UTC) - pc.max(batch.column("flow_end")).as_py()
    for name in ("flow_start", "flow_end"):
        i = batch.schema.get_field_index(name)
        batch = batch.set_column(i, batch.schema.field(name), pc.add(batch.column(name), pa.scalar(shift)))
    return batch


def scanner_flows_at_b() -> pa.RecordBatch:
    """The demo scanner's flows as B sees them, now: the same scanner probing B's own hosts."""
    batch = current_demo_batch()
    mine = batch.filter(
        pc.equal(
            batch.column("src_addr"), pa.scalar(ip_to_bytes16(SCANNER), batch.schema.field("src_addr").type)
        )
    )
    targets = pa.array([ip_to_bytes16(f"{B_NETWORK}{i % 250 + 1}") for i in range(mine.num_rows)],
                       type=batch.schema.field("dst_addr").type)  # fmt: skip
    return mine.set_column(mine.schema.get_field_index("dst_addr"), mine.schema.field("dst_addr"), targets)


class TwoNetworks:
    def __init__(self, bootstrap: str, tmp: Path, taxii_url: str) -> None:
        self.bootstrap, self.tmp, self.taxii_url = bootstrap, tmp, taxii_url
        self.a_config, self.a = streams_config(tmp)
        self.b_config, self.b = streams_config(tmp)
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SHOAL_TAXII_USER": "partner", "SHOAL_TAXII_PASSWORD": "s3cret"}

    def _spawn(self, *args: str, banner: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env)  # fmt: skip
        line = proc.stdout.readline()
        assert line.startswith(banner), line + proc.stderr.read()
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        setup_topics(self.bootstrap, self.a_config)  # A: the demo intel (no scanner in it)
        shoal("topics", "create", "--kafka", self.bootstrap, "--config", str(self.b_config))
        detections = detections_file(self.tmp)
        self.procs.append(start_worker(self.bootstrap, self.a_config, "a-worker", detections=detections))
        self._spawn("confirm", "--kafka", self.bootstrap, "--config", str(self.a_config), "--detections",
                    str(detections), "--instance-id", "a-confirm", banner="shoal confirm: instance")  # fmt: skip
        self.share_metrics = f"127.0.0.1:{free_port()}"
        self._spawn("share", "--policy", str(policy_file(self.tmp, self.taxii_url)), "--kafka", self.bootstrap,
                    "--config", str(self.a_config), "--metrics", self.share_metrics, banner="shoal share:")  # fmt: skip
        # B: intel sync from the shared collection every 2 s, and a matcher worker.
        sync = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "intel", "sync", "--kafka", self.bootstrap,
                                 "--config", str(self.b_config), "--every", "2", f"taxii:{self.taxii_url}"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self.env)  # fmt: skip
        self.procs.append(sync)
        self.procs.append(start_worker(self.bootstrap, self.b_config, "b-worker"))

    def stop(self) -> list[str]:
        errors = []
        for proc in reversed(self.procs):
            _, err = stop(proc)
            errors.append(err)
        return errors
