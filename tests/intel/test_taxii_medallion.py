"""TAXII 2.1: a real medallion server (memory backend) started by the test; a partner publishes with
taxii2-client, Shoal reads the collection page by page (``added_after`` paging) and matches."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import stix2
from taxii2client.v21 import Collection

sys.path.insert(0, str(Path(__file__).parent.parent / "detectors"))
from flowbatch import flow_batch

from detectors.index import IndicatorIndex
from detectors.matcher import Matcher
from pipeline.intel import load_source


def test_taxii_collection_pages_into_the_matcher(medallion: str, monkeypatch: pytest.MonkeyPatch) -> None:
    partner = Collection(medallion, user="partner", password="s3cret")
    indicators = [
        stix2.Indicator(
            pattern=f"[ipv4-addr:value = '203.0.113.{i}']",
            pattern_type="stix",
            valid_from="2026-01-01T00:00:00Z",
            confidence=80,
        )
        for i in range(1, 6)
    ]
    partner.add_objects(stix2.Bundle(*indicators, stix2.Indicator(pattern="[url:value = 'http://x.example/']",
                        pattern_type="stix", valid_from="2026-01-01T00:00:00Z")).serialize())  # fmt: skip
    monkeypatch.setenv("SHOAL_TAXII_USER", "partner")
    monkeypatch.setenv("SHOAL_TAXII_PASSWORD", "s3cret")
    load = load_source(f"taxii:{medallion}")
    # six objects over pages of two: every indicator arrived, the URL one is counted as unsupported
    assert sorted(i.id for i in load.indicators) == sorted(i.id for i in indicators)
    assert load.unsupported == {"object url": 1}
    alerts = Matcher(IndicatorIndex.build(load.indicators)).match(
        flow_batch([{"src": "192.0.2.1", "dst": "203.0.113.3"}, {"src": "192.0.2.1", "dst": "203.0.113.9"}])
    )
    assert alerts.column("dst_addr").to_pylist() == [bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 3])]
    assert os.environ["SHOAL_TAXII_USER"] == "partner"
