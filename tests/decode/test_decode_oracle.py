"""Decoded flows equal tshark's decoding of the same bytes, field by field (v5, v9, IPFIX/IPv6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from decode_oracle import have_tshark, tshark_flows

from pipeline.decode import Datagram, FlowDecoder
from pipeline.runtime.replay import read_capture
from pipeline.samples import DEMO_TRAFFIC
from pipeline.schemas import bytes16_to_ip

pytestmark = [pytest.mark.peers, pytest.mark.skipif(not have_tshark(), reason="tshark not installed")]


@pytest.mark.parametrize(("exporter", "version"), [("192.0.2.1", 5), ("192.0.2.2", 9), ("2001:db8::1", 10)])
def test_demo_traffic_matches_tshark(tmp_path: Path, exporter: str, version: int) -> None:
    payloads = [d.payload for d in read_capture(DEMO_TRAFFIC) if d.exporter == exporter]
    decoder = FlowDecoder()
    batch = decoder.decode([Datagram(p, exporter, 50000, 1.8e9) for p in payloads])
    ours = batch.to_pylist()
    theirs = tshark_flows(payloads, tmp_path, port=4739 if version == 10 else 2055)
    assert len(ours) == len(theirs) == 600
    assert not decoder.stats.errors
    # The decoder groups records per template, so order within the batch follows packets: compare in order.
    for o, t in zip(ours, theirs, strict=True):
        assert o["flow_version"] == version
        assert bytes16_to_ip(o["src_addr"]) == t["src_addr"]
        assert bytes16_to_ip(o["dst_addr"]) == t["dst_addr"]
        for field in ("src_port", "dst_port", "protocol", "packets", "octets", "input_if", "output_if"):
            assert o[field] == t[field], field
        if "tcp_flags" in t:
            assert o["tcp_flags"] == t["tcp_flags"]
        assert o["ip_version"] == (6 if version == 10 else 4)
