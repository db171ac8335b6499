"""The SOC dashboard against real data: a real Prometheus server (Debian's, loopback, 1 s scrapes)
scrapes a real Kafka deployment of Shoal (intel sync, collector, matcher worker) and the embedded
``shoal run --demo`` while the bundled sample traffic is replayed (with one packet left out per round,
so sequence gaps show, and one malformed datagram, so decode errors show). Every panel query, with the
dashboard's variables and ``$__rate_interval`` substituted, must parse and return data through
Prometheus' HTTP API. The same scrapes go through ``promtool check metrics`` and must match
docs/metrics.md."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from demo_reference import free_port
from kafka_helpers import ROOT, setup_topics, start_worker, stop, streams_config
from metrics_doc import DOC, families, render
from prometheus_client.parser import text_string_to_metric_families

from pipeline.runtime.replay import read_capture, restamp
from pipeline.samples import DEMO_DETECTIONS, DEMO_INTEL, DEMO_TRAFFIC

DASHBOARD = ROOT / "helm" / "shoal" / "dashboards" / "shoal-soc.json"
RATE_INTERVAL = "15s"
"""What Grafana gives $__rate_interval for a 1 s scrape interval at a few minutes' range, with margin
for a loaded machine (at least four scrapes)."""
VARIABLE_ALL = {"$job": ".+", "${job}": ".+"}


def _get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())  # fmt: skip


def _wait_ready(address: str, proc: subprocess.Popen, timeout: float = 60, path: str = "/readyz") -> None:
    deadline = time.monotonic() + timeout
    last: object = "no answer yet"
    while time.monotonic() < deadline:
        assert proc.poll() is None, stop(proc)
        started = time.monotonic()
        try:
            last = _get(f"http://{address}{path}", 5)  # the Helm chart gives probes 5 s too
            if last[0] == 200:
                return
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc} after {time.monotonic() - started:.1f} s"
        time.sleep(0.2)
    pytest.fail(f"{' '.join(proc.args[3:5])} at {address} never became ready: last answer {last}")


def _traffic(ports: dict[int, int], stop_event: threading.Event) -> None:
    """Replays the sample capture every 2 s until stopped, leaving out its 10th datagram (a sequence
    gap) and adding one datagram too short to be an export packet (a decode error)."""
    datagrams = list(read_capture(DEMO_TRAFFIC))
    senders: dict[tuple[str, int], socket.socket] = {}
    try:
        while not stop_event.is_set():
            for n, d in enumerate(datagrams):
                if n == 9:
                    continue
                sock = senders.setdefault(
                    (d.exporter, d.exporter_port), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                )
                sock.sendto(restamp(d.payload, int(time.time())), ("127.0.0.1", ports[d.collector_port]))
            next(iter(senders.values())).sendto(b"\x00\x09\x00", ("127.0.0.1", ports[2055]))
            stop_event.wait(2)
    finally:
        for sock in senders.values():
            sock.close()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}  # fmt: skip


def _queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            for var, value in VARIABLE_ALL.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unsubstituted variable in {panel['title']}: {expr}"
            out.append((f"{panel['title']} [{target['refId']}]", expr))
    return out


def _has_data(prometheus: str, expr: str) -> tuple[bool, str]:
    status, body = _get(f"http://{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    data = json.loads(body)
    assert status == 200 and data["status"] == "success", f"{expr}: {body}"
    values = [float(r["value"][1]) for r in data["data"]["result"]]
    return any(math.isfinite(v) for v in values), body


@pytest.mark.kafka
def test_every_panel_returns_data_from_a_real_prometheus(kafka, tmp_path: Path) -> None:
    prometheus_bin, promtool = shutil.which("prometheus"), shutil.which("promtool")
    assert prometheus_bin and promtool, (
        "Debian's prometheus package is missing (scripts/bootstrap.sh --peers)"
    )
    config, names = streams_config(tmp_path, flows_partitions=2)
    setup_topics(kafka.bootstrap, config)
    addr = {
        job: f"127.0.0.1:{free_port()}"
        for job in ("intel-sync", "detect", "collect", "run", "confirm", "share")
    }
    # The sharer: the SOC's own topic; a file that takes TLP:CLEAR only (the demo intel is GREEN: every
    # share refused); a TAXII server that is down (failures, retries, a destination down).
    policy = tmp_path / "sharing.toml"
    policy.write_text(
        '[identity]\nname = "Dashboard NREN"\n[constituency]\ncidrs = ["192.0.2.0/24", "2001:db8:c0::/48"]\n'
        '[[destinations]]\nname = "soc"\ntype = "kafka"\ntlp_ceiling = "amber"\n'
        f'[[destinations]]\nname = "public"\ntype = "file"\npath = "{tmp_path / "public.jsonl"}"\ntlp_ceiling = "clear"\n'
        '[[destinations]]\nname = "partner"\ntype = "taxii"\nurl = "http://127.0.0.1:9/api1/collections/'
        '91a7b528-80eb-42ed-a74d-c6fbd5a26116/"\ntimeout_seconds = 2\n'
    )
    netflow, ipfix = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    stop_traffic = threading.Event()
    try:
        procs.append(
            _spawn(
                "intel",
                "sync",
                "--kafka",
                kafka.bootstrap,
                "--config",
                str(config),
                "--every",
                "1",
                "--metrics",
                addr["intel-sync"],
                str(DEMO_INTEL),
                str(tmp_path / "missing.json"),
            )
        )
        procs.append(
            start_worker(kafka.bootstrap, config, "w0", metrics=addr["detect"], detections=DEMO_DETECTIONS)
        )
        procs.append(
            _spawn(
                "collect",
                "--listen",
                f"127.0.0.1:{netflow}",
                "--listen",
                f"127.0.0.1:{ipfix}",
                "--kafka",
                kafka.bootstrap,
                "--kafka-topic",
                names["flows"],
                "--metrics",
                addr["collect"],
                "--workers",
                "2",  # the workers' metrics, merged with a worker label, must pass promtool too
            )
        )
        procs.append(_spawn("run", "--demo", "--quiet", "--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0",
                            "--alerts", str(tmp_path / "alerts.jsonl"), "--detections-out",
                            str(tmp_path / "detections.jsonl"), "--metrics", addr["run"]))  # fmt: skip
        procs.append(_spawn("confirm", "--kafka", kafka.bootstrap, "--config", str(config), "--metrics",
                            addr["confirm"], "--detections", str(DEMO_DETECTIONS)))  # fmt: skip
        procs.append(_spawn("share", "--policy", str(policy), "--kafka", kafka.bootstrap, "--config", str(config),
                            "--metrics", addr["share"]))  # fmt: skip
        prom_port = free_port()
        prometheus = f"127.0.0.1:{prom_port}"
        scrape = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": f"shoal-{job}", "static_configs": [{"targets": [a]}]}
                                     for job, a in addr.items()]}  # fmt: skip
        (tmp_path / "prometheus.yml").write_text(json.dumps(scrape))
        procs.append(subprocess.Popen(
            [prometheus_bin, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address={prometheus}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))  # fmt: skip
        for job, proc in zip(addr, procs, strict=False):
            _wait_ready(addr[job], proc)
        _wait_ready(prometheus, procs[-1], path="/-/ready")
        threading.Thread(
            target=_traffic, args=({2055: netflow, 4739: ipfix}, stop_traffic), daemon=True
        ).start()

        pending = dict(_queries())
        deadline = time.monotonic() + 90
        while pending and time.monotonic() < deadline:
            time.sleep(1)
            pending = {title: expr for title, expr in pending.items() if not _has_data(prometheus, expr)[0]}
        assert not pending, f"panels without data: {json.dumps(pending, indent=1)}"

        scrapes = {
            f"shoal {job.replace('-', ' ')}": _get(f"http://{a}/metrics")[1] for job, a in addr.items()
        }
        for command, text in scrapes.items():
            res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                                 timeout=60, check=False)  # fmt: skip
            assert res.returncode == 0, f"{command}: {res.stdout}{res.stderr}"
        for job, a in addr.items():
            assert _get(f"http://{a}/healthz") == (200, "ok\n"), job
        values = {job: _samples(scrapes[f"shoal {job.replace('-', ' ')}"]) for job in addr}
        lag = {labels for name, labels in values["detect"] if name == "shoal_detect_consumer_lag_messages"}
        assert lag == {
            (("partition", "0"), ("topic", names["flows"])),
            (("partition", "1"), ("topic", names["flows"])),
        }
        sync = values["intel-sync"]
        assert sync["shoal_intel_sync_rounds_total", (("outcome", "ok"), ("source", str(DEMO_INTEL)))] >= 1
        missing = str(tmp_path / "missing.json")
        assert sync["shoal_intel_sync_rounds_total", (("outcome", "load_error"), ("source", missing))] >= 1
        assert sync["shoal_intel_sync_rounds_total", (("outcome", "ok"), ("source", missing))] == 0
        assert sync["shoal_intel_sync_indicators", (("source", str(DEMO_INTEL)),)] == 4
    finally:
        stop_traffic.set()
        for proc in reversed(procs):
            stop(proc)

    rendered = render(families(scrapes))
    if os.environ.get("SHOAL_WRITE_METRICS_DOC"):
        DOC.write_text(rendered)
    assert DOC.read_text() == rendered, (
        "docs/metrics.md differs from the commands' metrics (SHOAL_WRITE_METRICS_DOC=1)"
    )
