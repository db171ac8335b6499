"""Decoded flows equal tshark's decoding of the same bytes, field by field (v5, v9, IPFIX/IPv6)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from decode_oracle import have_tshark, tshark_flows
from decode_packets import as_block

from pipeline.decode import Datagram, FlowDecoder
from pipeline.runtime.replay import read_capture
from pipeline.samples import DEMO_TRAFFIC
from pipeline.schemas import FLOW_SCHEMA, bytes16_to_ip

pytestmark = [pytest.mark.peers, pytest.mark.skipif(not have_tshark(), reason="tshark not installed")]


@pytest.mark.parametrize("entry", ["decode", "decode_block"])
@pytest.mark.parametrize(("exporter", "version"), [("192.0.2.1", 5), ("192.0.2.2", 9), ("2001:db8::1", 10)])
def test_demo_traffic_matches_tshark(tmp_path: Path, exporter: str, version: int, entry: str) -> None:
    """Both entry points: ``decode`` (a list of datagrams) and ``decode_block`` (the collector's
    receive-buffer rows, fed in chunks of 7 so templates and data arrive in different calls)."""
    payloads = [d.payload for d in read_capture(DEMO_TRAFFIC) if d.exporter == exporter]
    decoder = FlowDecoder()
    datagrams = [Datagram(p, exporter, 50000, 1.8e9) for p in payloads]
    if entry == "decode":
        ours = decoder.decode(datagrams).to_pylist()
    else:
        ours = []
        for i in range(0, len(datagrams), 7):
            batches = decoder.decode_block(*as_block(datagrams[i : i + 7]))
            ours += pa.Table.from_batches(batches, schema=FLOW_SCHEMA).to_pylist()
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
