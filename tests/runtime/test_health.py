"""The metrics port of every long-running command: /metrics, /healthz, /readyz, loopback by default,
and the bounded labels the SOC metrics use."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from demo_reference import free_port
from prometheus_client import Counter

from pipeline.metrics import (
    OTHER,
    Health,
    LabelCap,
    PolledCheck,
    new_registry,
    parse_listen,
    serve,
    tlp_label,
)

ROOT = Path(__file__).resolve().parents[2]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_endpoints_and_readiness_checks() -> None:
    registry = new_registry()
    Counter("probe_hits", "test counter", registry=registry).inc(3)
    health = Health()
    state = {"index": False}
    health.add("index loaded", lambda: state["index"])
    health.add("kafka reachable", lambda: (_ for _ in ()).throw(RuntimeError("broker down")))
    host, port = serve(registry, ":0", health)
    assert host == "127.0.0.1"  # no host given: loopback only
    base = f"http://{host}:{port}"
    assert _get(f"{base}/healthz") == (200, "ok\n")
    status, body = _get(f"{base}/readyz")
    assert status == 503
    assert body == "not ready: index loaded\nnot ready: kafka reachable: RuntimeError: broker down\n"
    state["index"] = True
    health.add("kafka reachable", lambda: True)
    assert _get(f"{base}/readyz") == (200, "ready\n")
    assert "probe_hits_total 3.0" in _get(f"{base}/metrics")[1]
    assert _get(f"{base}/nothing")[0] == 404


def test_loopback_default_is_not_reachable_on_other_addresses() -> None:
    host, port = serve(new_registry(), str(free_port()))
    assert host == "127.0.0.1"
    with socket.socket() as s:  # the wildcard would also answer on 127.0.0.2; loopback-bound does not
        s.settimeout(2)
        assert s.connect_ex(("127.0.0.2", port)) != 0


@pytest.mark.parametrize(
    ("listen", "expected"),
    [(":9108", ("127.0.0.1", 9108)), ("9108", ("127.0.0.1", 9108)), ("0.0.0.0:9108", ("0.0.0.0", 9108)),
     ("[::1]:9108", ("::1", 9108)), ("[::]:0", ("::", 0))],
)  # fmt: skip
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


def test_parse_listen_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_listen("localhost:http")


def test_label_cap_bounds_values() -> None:
    cap = LabelCap(3)
    assert [cap(f"feed-{i}") for i in range(5)] == ["feed-0", "feed-1", "feed-2", OTHER, OTHER]
    assert cap("feed-1") == "feed-1"  # known values keep their name


@pytest.mark.parametrize(
    ("value", "label"),
    [("TLP:GREEN", "green"), ("amber+strict", "amber+strict"), ("white", "clear"), ("tlp:red", "red"),
     (None, "none"), ("TLP:PURPLE", "none"), ("x" * 1000, "none")],
)  # fmt: skip
def test_tlp_label_is_bounded(value: object, label: str) -> None:
    assert tlp_label(value) == label


@pytest.mark.parametrize(
    ("source", "label"),
    [("taxii:https://user:s3cret@taxii.example.org/api/collections/1/", "taxii:https://taxii.example.org/api/collections/1/"),
     ("misp:https://misp.example.org", "misp:https://misp.example.org"), ("/srv/intel/feed.json", "/srv/intel/feed.json")],
)  # fmt: skip
def test_sync_source_labels_carry_no_credentials(source: str, label: str) -> None:
    from pipeline.runtime.sync_metrics import SyncMetrics, source_label

    assert source_label(source) == label
    registry = new_registry()
    SyncMetrics(registry, [source]).outcome(source, "ok", 3)
    assert registry.get_sample_value("shoal_intel_sync_indicators", {"source": label}) == 3


def test_a_polled_check_answers_at_once_and_reports_a_hung_run() -> None:
    """A readiness check that waits on a broker must not hold the probe: the probe reads the last
    result, and a run that never comes back turns into a reason instead of a probe that times out."""
    gate = threading.Event()
    calls: list[float] = []

    def slow_broker() -> bool:
        calls.append(time.monotonic())
        if len(calls) > 1:
            gate.wait(30)  # the second run hangs until the test lets it go
        return True

    check = PolledCheck("kafka reachable", slow_broker, every=0.05, stale_after=2.0)
    deadline = time.monotonic() + 5
    while check() != True and time.monotonic() < deadline:  # noqa: E712 (a reason is truthy)
        time.sleep(0.01)
    assert check() is True and len(calls) >= 1
    health = Health()
    health.add("kafka reachable", check)
    started = time.monotonic()
    while time.monotonic() - started < 0.3:  # hung, but not for long yet: the last result stands
        assert health.failing() == []
        time.sleep(0.05)
    time.sleep(2.0)
    probe_started = time.monotonic()
    failing = health.failing()
    assert time.monotonic() - probe_started < 0.5  # answered at once, though the check still hangs
    assert len(failing) == 1 and failing[0].startswith("kafka reachable: check has not come back for")
    assert len(calls) == 2  # one run at a time: the hung run is not joined by more
    gate.set()
    deadline = time.monotonic() + 5
    while health.failing() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert health.failing() == []
    check.close()


def test_a_polled_check_starts_not_ready_and_follows_its_check() -> None:
    state = {"up": False}
    health = Health()
    health.add("kafka reachable", lambda: state["up"] or "no broker answered", poll_every=0.05)
    deadline = time.monotonic() + 5
    while health.failing() == ["kafka reachable: not checked yet"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert health.failing() == ["kafka reachable: no broker answered"]
    state["up"] = True
    while health.failing() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert health.failing() == []


def test_a_probe_that_would_say_not_ready_asks_for_a_fresh_result() -> None:
    """Right after start-up the last background result is "not ready"; the probe must not repeat it
    for a whole period (60 s here) once the check would pass, but a ready result is not re-checked
    by probes: going from ready to not ready is the background thread's to notice."""
    state = {"up": False, "runs": 0}

    def broker() -> bool | str:
        state["runs"] += 1
        return state["up"] or "no broker answered"

    check = PolledCheck("kafka reachable", broker, every=60)
    assert check() == "no broker answered"
    state["up"] = True
    started = time.monotonic()
    assert check() is True
    assert time.monotonic() - started < 0.9  # a fresh run, not the 60 s period nor the whole 1 s wait
    runs = state["runs"]
    state["up"] = False
    assert check() is True and state["runs"] == runs  # ready: the last result, no run per probe
    check.close()
