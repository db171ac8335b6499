"""Service plumbing (sockets -> decoder -> batcher -> sinks, stop, allowlist, metrics) with a naive v5
decoder; the end-to-end tests with the real decoder and peer collectors live in test_collector_e2e.py."""

import random
import socket
import time
from pathlib import Path

import pytest
from collector_packets import make_flows, v5_packet
from collector_v5ref import Dgram, V5Decoder
from prometheus_client import CollectorRegistry, generate_latest

from pipeline.collector.config import load_config
from pipeline.collector.service import Collector
from pipeline.sinks.parquet import ParquetSink, read_flows


def _collector(tmp_path: Path, registry: CollectorRegistry, real: bool = False, **receive) -> Collector:
    """With the naive v5 decoder (per-datagram path), or ``real``: the FlowDecoder (block path)."""
    cfg = load_config(
        environ={},
        overrides={
            "receive": {"listen": ["127.0.0.1:0", "[::1]:0"], **receive},
            "batch": {"max_rows": 500, "max_seconds": 0.2},
            "parquet": {"dir": str(tmp_path / "out")},
            "metrics": {"max_exporters": 2},
        },
    )
    sink = ParquetSink(cfg.parquet.dir)
    if real:
        return Collector(cfg, [sink], registry)
    return Collector(cfg, [sink], registry, decoder=V5Decoder(), datagram_type=Dgram)


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.01)
    return predicate()


def test_everything_received_is_written_on_stop_v4_and_v6(tmp_path: Path):
    reg = CollectorRegistry()
    c = _collector(tmp_path, reg)
    c.start()
    rng = random.Random(3)
    sent = []
    try:
        (h4, p4), (h6, p6) = c.addresses
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s4,
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s6,
        ):
            for i in range(40):
                flows = make_flows(rng, 30, False, i * 30)
                sent += flows
                (s4 if i % 2 else s6).sendto(v5_packet(flows, i), (h4, p4) if i % 2 else (h6, p6))
                s6.sendto(b"\x00\x05garbage", (h6, p6))
        assert _wait(lambda: c.metrics._flows and sum(c.metrics._flows.values()) == 1200)
    finally:
        c.stop()
    table = read_flows(tmp_path / "out")
    assert sorted(table.column("dst_port").to_pylist()) == sorted(f.dport for f in sent)
    assert (tmp_path / "out" / ".shoal" / "decoder-state").exists()
    text = generate_latest(reg).decode()
    assert 'shoal_collector_flows_decoded_total{listener="127.0.0.1:' in text
    assert 'shoal_collector_packets_received_total{exporter="::1",listener="[::1]:' in text
    assert reg.get_sample_value("shoal_sink_rows_written_total", {"sink": "parquet"}) == 1200
    assert reg.get_sample_value("shoal_collector_batch_latency_seconds_count") >= 3
    assert reg.get_sample_value("shoal_decoder_errors_total", {"exporter": "::1", "reason": "not_v5"}) == 40


@pytest.mark.parametrize("real", [False, True])
def test_allowlist_drops_and_counts_others(tmp_path: Path, real: bool):
    reg = CollectorRegistry()
    c = _collector(tmp_path, reg, real, allow_exporters=["10.0.0.0/8", "::1/128"])
    c.start()
    try:
        (h4, p4), (h6, p6) = c.addresses
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s4:
            for i in range(5):
                s4.sendto(v5_packet(make_flows(random.Random(i), 3, False, 0), i), (h4, p4))
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s6:
            s6.sendto(v5_packet(make_flows(random.Random(9), 3, False, 0), 0), (h6, p6))
        lst = f"127.0.0.1:{p4}"
        assert _wait(
            lambda: reg.get_sample_value("shoal_collector_packets_rejected_total", {"listener": lst}) == 5
        )
        assert _wait(lambda: sum(c.metrics._flows.values()) == 3)
    finally:
        c.stop()
    assert len(read_flows(tmp_path / "out")) == 3


@pytest.mark.parametrize("real", [False, True])
def test_exporter_labels_are_capped(tmp_path: Path, real: bool):
    reg = CollectorRegistry()
    c = _collector(tmp_path, reg, real)  # max_exporters = 2
    c.start()
    try:
        (h4, p4), _ = c.addresses
        for src in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((src, 0))
                s.sendto(b"junk", (h4, p4))
        lst = f"127.0.0.1:{p4}"
        assert _wait(
            lambda: (
                reg.get_sample_value(
                    "shoal_collector_packets_received_total", {"listener": lst, "exporter": "other"}
                )
                == 2
            )
        )
    finally:
        c.stop()
    exporters = {
        s.labels["exporter"]
        for m in reg.collect()
        if m.name == "shoal_collector_packets_received"
        for s in m.samples
    }
    assert exporters == {"127.0.0.2", "127.0.0.3", "other"}


def test_ipv6_wildcard_listener_alone_receives_ipv4_exporters(tmp_path: Path):
    """Issue 15, item 18: ``--listen [::]:PORT`` alone used to be IPv6-only, missing every IPv4
    exporter; next to an IPv4 listener on the same port it stays IPv6-only (both can bind)."""
    reg = CollectorRegistry()
    c = _collector(tmp_path, reg, real=True, listen=["[::]:0"])
    c.start()
    try:
        port = c.addresses[0][1]
        flows = make_flows(random.Random(5), 20, False, 0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s4:
            s4.sendto(v5_packet(flows, 0), ("127.0.0.1", port))
        assert _wait(lambda: c.metrics.total_flows() == 20)
        assert [s.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) for s in c.sockets] == [0]
    finally:
        c.stop()
    assert c.decoder.stats.flows == {"127.0.0.1": 20}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))
        free = probe.getsockname()[1]
    both = _collector(
        tmp_path / "both", CollectorRegistry(), real=True, listen=[f"0.0.0.0:{free}", f"[::]:{free}"]
    )
    both.start()
    try:
        assert [s.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) for s in both.sockets[1:]] == [1]
    finally:
        both.stop()
