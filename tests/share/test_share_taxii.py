"""The TAXII 2.1 destination against a real medallion server: what it posts is read back with
taxii2-client and compared (every object, latest version, counts equal the detections' flows, strict
STIX); a re-send changes nothing; an update is a second version; a refused login or a server that
is down is a delivery error to retry, never a crash."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import stix2
from share_data import detection
from taxii2client.v21 import Collection

from detectors.constituency import ConstituencyConfig
from pipeline.share.aggregate import Aggregator
from pipeline.share.build import ShareBuilder
from pipeline.share.build import context as share_context
from pipeline.share.destinations.base import DeliveryError, Share
from pipeline.share.destinations.taxii import TaxiiDestination, read_back
from pipeline.share.policy import DestinationConfig, IdentityConfig, SharingPolicy

W0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)


def policy(url: str) -> SharingPolicy:
    dest = DestinationConfig(name="tg", type="taxii", url=url, user_env="T_USER", secret_env="T_PASS")
    return SharingPolicy(identity=IdentityConfig(name="Network A CERT"), destinations=(dest,),
                         constituency=ConstituencyConfig(cidrs=("192.0.2.0/24",))).validate()  # fmt: skip


def shares(p: SharingPolicy, detections: list[dict[str, Any]]) -> dict[str, Share]:
    aggregator = Aggregator(ShareBuilder(p))
    out: dict[str, Share] = {}
    for offset, d in enumerate(detections):
        out.update((s.id, s) for s in aggregator.add(d, 0, offset))
    return out


def latest(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for o in objects:
        if o["id"] not in out or o.get("modified", "") > out[o["id"]].get("modified", ""):
            out[o["id"]] = o
    return out


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_USER", "partner")
    monkeypatch.setenv("T_PASS", "s3cret")


def test_taxii_collection_read_back_equals_what_was_shared(medallion: str, creds: None) -> None:
    p = policy(medallion)
    indicators = [f"indicator--{uuid.uuid4()}" for _ in range(3)]
    dets = [detection(indicator=indicators[i % 3], host=f"192.0.2.{i + 1}", flows=i + 2, window_start=W0)
            for i in range(9)]  # fmt: skip
    dets.append(
        detection(kind="scan", scanner="198.51.100.7", port=22, targets=300, flows=400, window_start=W0)
    )
    first = shares(p, dets)
    destination = TaxiiDestination(p.destinations[0], share_context(p))
    destination.send(list(first.values()))
    destination.send(list(first.values()))  # a re-send (an answer lost, a restart): no error, no new version

    partner = Collection(medallion, user="partner", password="s3cret")
    objects = read_back(partner)
    assert len(objects) == len({(o["id"], o.get("modified")) for o in objects})
    held = latest(objects)
    sent = {o["id"]: o for s in first.values() for o in s.objects}
    assert {i: held[i] for i in sent} == sent
    assert held[share_context(p).identity["id"]]["name"] == "Network A CERT"
    for obj in held.values():
        stix2.parse(obj, allow_custom=False)
    counts = {o["sighting_of_ref"]: o["count"] for o in held.values() if o["type"] == "sighting"}
    for ind in indicators:
        assert counts[ind] == sum(d["flows"] for d in dets if d["key"] == ind)
    scan = [o for o in held.values() if o["type"] == "indicator"]
    assert [o["pattern"] for o in scan] == ["[ipv4-addr:value = '198.51.100.7']"]
    assert counts[scan[0]["id"]] == 400
    assert not any("192.0.2." in str(o) for o in objects)

    # One host's detection grows: the sighting is a new version of the same object.
    grown = detection(indicator=indicators[0], host="192.0.2.1", flows=50, window_start=W0, updated_s=40)
    update = shares(p, [*dets, grown])
    changed = [s for s in update.values() if s.modified != first[s.id].modified]
    assert len(changed) == 1
    destination.send(changed)
    versions = [o for o in read_back(partner) if o["id"] == changed[0].id]
    assert len(versions) == 2
    assert latest(versions)[changed[0].id]["count"] == 50 + sum(
        d["flows"] for d in dets[3:] if d["key"] == indicators[0]
    )
    destination.close()


def test_taxii_refused_login_and_server_down_are_delivery_errors(
    medallion: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = policy(medallion)
    batch = list(shares(p, [detection(window_start=W0)]).values())
    monkeypatch.setenv("T_USER", "partner")
    monkeypatch.setenv("T_PASS", "wrong")
    with pytest.raises(DeliveryError) as refused:
        TaxiiDestination(p.destinations[0], share_context(p)).send(batch)
    assert refused.value.failed is None and "wrong" not in str(refused.value)
    monkeypatch.setenv("T_PASS", "s3cret")
    down = policy("http://127.0.0.1:9/api1/collections/91a7b528-80eb-42ed-a74d-c6fbd5a26116/")
    with pytest.raises(DeliveryError):
        TaxiiDestination(down.destinations[0], share_context(down)).send(batch)
    monkeypatch.delenv("T_PASS")
    with pytest.raises(ValueError, match="T_PASS"):
        TaxiiDestination(p.destinations[0], share_context(p))
