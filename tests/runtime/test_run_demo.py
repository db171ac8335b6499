"""``shoal run --demo`` end to end: the embedded collector + matcher receive the bundled sample traffic
over UDP and raise exactly the alerts a naive reference finds in tshark's decoding of the same pcap."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from demo_reference import expected_alerts, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.peers
def test_run_demo_raises_exactly_the_expected_alerts(tmp_path: Path) -> None:
    alerts_file, metrics = tmp_path / "alerts.jsonl", f"127.0.0.1:{free_port()}"
    detections_file = tmp_path / "detections.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--demo", "--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0",
         "--alerts", str(alerts_file), "--detections-out", str(detections_file), "--metrics", metrics,
         "--duration", "8", "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        banner = proc.stdout.readline()
        assert banner.startswith("shoal run: listening on"), banner + proc.stderr.read()
        assert "4 indicators" in banner
        played = proc.stdout.readline()
        assert "played 60 sample export packets" in played
        import time

        time.sleep(2)
        scrape = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "1800 flows matched" in out
    alerts = [json.loads(line) for line in alerts_file.read_text().splitlines()]
    got = {(a["src_addr"], a["dst_addr"], a["src_port"], a["dst_port"], a["side"]) for a in alerts}
    assert len(got) == len(alerts)
    assert got == expected_alerts()
    assert "shoal_matcher_flows_total 1800.0" in scrape
    assert f'shoal_matcher_alerts_total{{source="Demo NREN CERT hub"}} {float(len(alerts))}' in scrape
    # The demo intel is marked TLP:GREEN by the STIX 2.1 standard marking definition's id.
    assert f'shoal_alerts_total{{feed="Demo NREN CERT hub",tlp="green"}} {float(len(alerts))}' in scrape
    assert "shoal_pipeline_latency_seconds_count 0.0" not in scrape
    assert "shoal_intel_indicators 4.0" in scrape

    # Detections: the alerts aggregated per indicator and internal host, and the sample's one scanner.
    latest: dict[str, dict] = {}
    for line in detections_file.read_text().splitlines():
        record = json.loads(line)
        latest[record["id"]] = record  # a later version of an id replaces the earlier one
    assert all(d["final"] for d in latest.values())  # the stop closed every window
    by_host: collections.Counter = collections.Counter()
    for src, dst, _sport, _dport, side in expected_alerts():
        by_host[(dst if side == "src" else src)] += 1
    got_by_host: collections.Counter = collections.Counter()
    for d in latest.values():
        if d["kind"] == "indicator":
            got_by_host[d["internal_host"]] += d["flows"]
    assert got_by_host == by_host
    (scan,) = [d for d in latest.values() if d["kind"] == "scan"]
    assert scan["scan"]["scanner"] == "203.0.113.200" and scan["scan"]["targets"] == 80
    assert scan["state"] == "confirmed" and scan["internal_host"] is None
    assert f"{len(latest)} detections" in out
