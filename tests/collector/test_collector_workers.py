"""``shoal collect --workers N`` (issue 14): real worker processes on loopback, fed by exporters whose
packets scapy builds. Every flow must be kept exactly once and each exporter's flows decoded by one
worker only (the worker is read from the Parquet file names, and again from the metrics' ``worker``
label); SIGTERM flushes every worker; a second collector cannot join the port; a dead worker comes
back on its own sockets without losing what the kernel queued for it meanwhile."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import ipaddress
import json
import os
import random
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from collector_packets import Flow, TemplatedExporter, make_flows, v5_packet
from collector_procs import Shoal, free_port
from prometheus_client.parser import text_string_to_metric_families
from test_collector_commands import clean_failure, shoal

from pipeline.collector.config import (
    CollectorConfig,
    ConfigError,
    Endpoint,
    ReceiveConfig,
    load_config,
    usable_cores,
)
from pipeline.collector.reuseport import PortClaimed, address_hash_program, bind_group, claim_port
from pipeline.schemas import bytes16_to_ip

pytest.importorskip("pipeline.decode")
needs_two_cores = pytest.mark.skipif(usable_cores() < 2, reason="two workers need two cores")

FILE_WORKER = re.compile(r"^flows-\d{8}T\d{6}Z-w(\d+)-[0-9a-f]{12}\.parquet$")


# -- exporters ------------------------------------------------------------------------------------
class Exporter:
    """One router: its own source address (127.0.0.x) and port, v5, v9 or IPFIX."""

    def __init__(self, n: int, version: int, every: int = 10) -> None:
        self.address = f"127.0.0.{10 + n}"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.address, 0))
        self.port = self.sock.getsockname()[1]
        self.version = version
        self.templated = TemplatedExporter(version, v6=n % 2 == 0, every=every) if version != 5 else None
        self.v5_sequence = 0
        self.flows: list[Flow] = []

    def send(self, flows: list[Flow], target: tuple[str, int], sock: socket.socket | None = None) -> None:
        if self.templated is None:
            payload = v5_packet(flows, self.v5_sequence)
            self.v5_sequence += len(flows)
        else:
            payload = self.templated.packet(flows)
        (sock or self.sock).sendto(payload, target)
        self.flows += flows

    def close(self) -> None:
        self.sock.close()


def exporters(count: int, every: int = 10) -> list[Exporter]:
    return [Exporter(n, (5, 9, 10)[n % 3], every) for n in range(count)]


def offer(
    routers: list[Exporter], target: tuple[str, int], packets: int, per_packet: int, rng, first_id: int
) -> int:
    """Each exporter sends ``packets`` packets, round robin; returns the next free flow id."""
    for _ in range(packets):
        for r in routers:
            v6 = r.templated is not None and r.templated.v6
            r.send(make_flows(rng, per_packet, v6, first_id), target)
            first_id += per_packet
    return first_id


# -- reading what the workers wrote --------------------------------------------------------------
def rows_by_worker(out: Path) -> list[tuple[int, dict]]:
    """(worker, row) for every row of every completed Parquet file, the worker from the file name."""
    found = []
    for path in sorted(out.rglob("*.parquet")):
        if path.name.startswith("."):
            continue
        m = FILE_WORKER.match(path.name)
        assert m, f"file name without a worker tag: {path.name}"
        for row in pq.read_table(path).to_pylist():
            found.append((int(m.group(1)), row))
    return found


def check_kept_once_by_one_worker(out: Path, routers: list[Exporter], workers: int) -> dict[int, set]:
    """Every flow sent is kept exactly once, as sent; each exporter's flows come from one worker.
    Returns the exporters each worker decoded."""
    sent = {(f.sport, f.dport): (r, f) for r in routers for f in r.flows}
    seen: dict[tuple[int, int], int] = collections.Counter()
    by_exporter: dict[tuple[str, int], set[int]] = collections.defaultdict(set)
    for worker, row in rows_by_worker(out):
        key = (row["src_port"], row["dst_port"])
        seen[key] += 1
        router, flow = sent[key]
        exporter = (str(bytes16_to_ip(row["exporter"])), row["exporter_port"])
        assert exporter == (router.address, router.port)
        assert (bytes16_to_ip(row["src_addr"]), bytes16_to_ip(row["dst_addr"])) == (
            ipaddress.ip_address(flow.src),
            ipaddress.ip_address(flow.dst),
        )
        assert (row["packets"], row["octets"], row["protocol"]) == (flow.packets, flow.octets, flow.proto)
        assert row["flow_version"] == router.version
        by_exporter[exporter].add(worker)
    missing = set(sent) - set(seen)
    assert not missing, f"{len(missing)} of {len(sent)} flows missing"
    assert all(n == 1 for n in seen.values()), "flows kept twice"
    split = {e: w for e, w in by_exporter.items() if len(w) != 1}
    assert not split, f"exporters decoded by several workers: {split}"
    per_worker: dict[int, set] = collections.defaultdict(set)
    for exporter, ws in by_exporter.items():
        per_worker[next(iter(ws))].add(exporter)
    assert set(per_worker) == set(range(workers)), f"not every worker got exporters: {per_worker.keys()}"
    return per_worker


def scrape(address: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as res:
        text = res.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def get(address: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(predicate, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def worker_pids(collector: Shoal) -> list[int]:
    line = collector.proc.stdout.readline()
    m = re.match(r"shoal collect: (\d+) workers \(pids ([\d, ]+)\)", line)
    assert m, line
    return [int(p) for p in m.group(2).split(", ")]


# -- configuration --------------------------------------------------------------------------------
def test_worker_count_is_validated_with_clear_messages() -> None:
    base = CollectorConfig(receive=ReceiveConfig(listen=("127.0.0.1:0",)))

    def count(value, cores=4):
        return dataclasses.replace(base, workers=value).worker_count(cores)

    assert count(1) == 1 and count("3") == 3 and count("auto") == 4 and count(" AUTO ", cores=2) == 2
    for value, message in [
        (0, "0 is not a number of workers (1 or more, or 'auto')"),
        (-2, "-2 is not a number of workers"),
        ("-1", "-1 is not a number of workers"),
        (5, "5 is more than the 4 core(s) this process may use"),
        ("many", "'many' is not a number of workers or 'auto'"),
        (2.5, "2.5 is not a number of workers"),
        (True, "True is not a number of workers"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            count(value)
    env = load_config(
        environ={"SHOAL_COLLECT__WORKERS": "auto", "SHOAL_COLLECT__RECEIVE__LISTEN": "127.0.0.1:0"}
    )
    assert env.worker_count() == usable_cores()


def test_a_file_asking_for_more_workers_than_cores_loads_but_does_not_run(tmp_path: Path) -> None:
    """The file is checked for its form wherever it is read (a chart test on a small machine); the
    number of cores is checked when the collector starts."""
    path = tmp_path / "c.toml"
    path.write_text('workers = 64\n[receive]\nlisten = ["127.0.0.1:0"]\n')
    config = load_config(path)
    assert config.worker_count(cores=64) == 64
    with pytest.raises(ConfigError, match="64 is more than the 2 core"):
        config.worker_count(cores=2)
    path.write_text('workers = "auto"\n[receive]\nlisten = ["127.0.0.1:0"]\n')
    assert load_config(path).worker_count(cores=3) == 3


def test_usable_cores_follow_the_cgroup_cpu_limit(tmp_path: Path) -> None:
    """A container's CPU limit (cgroup v2 cpu.max, here on a parent group) caps ``auto``."""
    root = tmp_path / "cgroup"
    (root / "kubepods" / "pod1").mkdir(parents=True)
    (root / "kubepods" / "pod1" / "cpu.max").write_text("max 100000\n")
    (root / "kubepods" / "cpu.max").write_text("50000 100000\n")  # half a CPU: one worker
    membership = tmp_path / "cgroup-of-self"
    membership.write_text("0::/kubepods/pod1\n")
    assert usable_cores(root, membership) == 1
    (root / "kubepods" / "cpu.max").write_text("max 100000\n")
    assert usable_cores(root, membership) == len(os.sched_getaffinity(0))


def test_bad_worker_counts_are_messages_at_the_command_line(tmp_path: Path) -> None:
    too_many = str(usable_cores() + 1)
    for value, words in [("0", ["workers: 0 is not"]), ("-1", ["workers: -1 is not"]),
                         (too_many, [f"workers: {too_many} is more than the {usable_cores()} core"]),
                         ("two", ["workers: 'two'"])]:  # fmt: skip
        res = shoal("collect", "--listen", "127.0.0.1:0", "--parquet", str(tmp_path), "--workers", value)
        clean_failure(res, 2, *words)
    res = shoal("collect", "--listen", "127.0.0.1:0", "--parquet", str(tmp_path),
                env={"SHOAL_COLLECT__WORKERS": "0"})  # fmt: skip
    clean_failure(res, 2, "workers: 0 is not")


def test_state_file_per_worker() -> None:
    c = CollectorConfig(receive=ReceiveConfig(listen=("127.0.0.1:0",)), state_file="/var/lib/s/state")
    assert str(c.state_path()) == "/var/lib/s/state"
    assert str(c.state_path(1)) == "/var/lib/s/state.w1"


# -- the port group -------------------------------------------------------------------------------
def test_address_hash_keeps_every_port_of_an_address_on_one_socket() -> None:
    """With templates keyed without the port (Junos), one router's streams from several source
    ports must reach one worker: the BPF program picks the socket from the source address only."""
    assert address_hash_program(2)[-2] == (0x94, 0, 0, 2)  # ... modulo the group size
    v4 = [f"127.0.0.{i}" for i in range(1, 41)]
    for host, sources in [("127.0.0.1", v4), ("::", v4), ("::1", ["::1"])]:
        claims: dict[int, socket.socket] = {}
        group = bind_group(Endpoint(host, 0), 2, 1 << 20, host != "::", True, claims)
        try:
            port = group[0].getsockname()[1]
            for address in sources:
                for _ in range(4):  # a new source port each time
                    fam = socket.AF_INET6 if ":" in address else socket.AF_INET
                    with socket.socket(fam, socket.SOCK_DGRAM) as tx:
                        tx.bind((address, 0))
                        tx.sendto(b"x", ("::1" if ":" in address else "127.0.0.1", port))
            landed: dict[str, set[int]] = collections.defaultdict(set)
            for i, sock in enumerate(group):
                while True:
                    try:
                        _, sender = sock.recvfrom(16)
                    except BlockingIOError:
                        break
                    landed[sender[0].removeprefix("::ffff:")].add(i)
            assert set(landed) == set(sources)
            assert all(len(v) == 1 for v in landed.values()), landed
            if len(sources) > 1:
                per_socket = collections.Counter(next(iter(v)) for v in landed.values())
                assert len(per_socket) == 2 and min(per_socket.values()) >= 10, per_socket
        finally:
            for sock in group + list(claims.values()):
                sock.close()


def test_a_claimed_port_cannot_be_claimed_again() -> None:
    first = claim_port(free_port())
    try:
        port = int(first.getsockname()[1:].decode().rsplit("/", 1)[1])
        with pytest.raises(PortClaimed, match=f"UDP port {port} is served by another shoal collect"):
            claim_port(port)
    finally:
        first.close()
    claim_port(port).close()  # released with its socket


@needs_two_cores
def test_a_second_collector_cannot_join_the_workers_port(tmp_path: Path) -> None:
    """Issue 15, item 5 with workers: only the collector's own workers share the port. A second
    ``shoal collect`` (with or without workers, on the same or the wildcard address) fails, a
    plain socket too, and the first keeps every flow."""
    first = Shoal(tmp_path / "first", ["127.0.0.1:0"], "--workers", "2")
    try:
        port = first.addresses[0][1]
        for listen, extra in [(f"127.0.0.1:{port}", ["--workers", "2"]), (f"0.0.0.0:{port}", ["--workers", "2"]),
                              (f"127.0.0.1:{port}", [])]:  # fmt: skip
            res = shoal("collect", "--listen", listen, "--parquet", str(tmp_path / "second"), *extra)
            clean_failure(res, 1, "cannot listen")
            if extra:
                assert f"UDP port {port} is served by another shoal collect" in res.stderr
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as thief, pytest.raises(OSError):
            thief.bind(("127.0.0.1", port))
        routers = exporters(12)
        offer(routers, ("127.0.0.1", port), 2, 5, random.Random(3), 0)
        totals = first.stop()
    finally:
        first.kill()
    assert totals["parquet_written"] == 12 * 2 * 5
    check_kept_once_by_one_worker(tmp_path / "first", routers, 2)


# -- the collector with workers, end to end -------------------------------------------------------
@needs_two_cores
def test_fifty_exporters_kept_exactly_once_each_by_one_worker(tmp_path: Path) -> None:
    out, metrics = tmp_path / "flows", f"127.0.0.1:{free_port(socket.AF_INET)}"
    collector = Shoal(out, ["127.0.0.1:0"], "--workers", "2", "--metrics", metrics)
    routers = exporters(50)
    try:
        worker_pids(collector)
        assert get(metrics, "/readyz") == (200, "ready\n")
        target = collector.addresses[0]
        offer(routers, target, 4, 10, random.Random(7), 0)
        sent = 50 * 4 * 10

        def decoded() -> float:
            values = scrape(metrics)
            return sum(v for (name, _), v in values.items() if name == "shoal_collector_flows_decoded_total")

        wait_for(lambda: decoded() == sent, what=f"{sent} flows decoded")
        values = scrape(metrics)
        totals = collector.stop()
    finally:
        collector.kill()
        for r in routers:
            r.close()
    assert totals["flows_decoded"] == totals["flows_batched"] == totals["parquet_written"] == sent
    per_worker = check_kept_once_by_one_worker(out, routers, 2)
    # the metrics say the same: each exporter's packets were received by the worker that wrote its flows
    received = collections.defaultdict(dict)
    for (name, pairs), value in values.items():
        labels = dict(pairs)
        if name == "shoal_collector_packets_received_total" and value:
            received[labels["exporter"]][int(labels["worker"])] = value
    for worker, routers_seen in per_worker.items():
        for address, _ in routers_seen:
            assert received[address] == {worker: 4}, (address, received[address])
    flows = collections.Counter()
    for (name, labels), value in values.items():
        if name == "shoal_collector_flows_decoded_total":
            flows[dict(labels)["worker"]] += value
    assert set(flows) == {"0", "1"} and all(flows.values())
    assert all(values["shoal_collector_worker_up", (("worker", w),)] == 1 for w in "01")
    assert all(values["shoal_collector_worker_restarts_total", (("worker", w),)] == 0 for w in "01")


@needs_two_cores
def test_sigterm_flushes_every_worker(tmp_path: Path) -> None:
    """Batches would wait an hour; SIGTERM right after the last packet must still write every flow,
    from both workers (set up through the environment this time)."""
    out = tmp_path / "flows"
    collector = Shoal(
        out, ["127.0.0.1:0"], env={"SHOAL_COLLECT__WORKERS": "2", "SHOAL_COLLECT__BATCH__MAX_SECONDS": "3600"}
    )
    routers = exporters(30)
    try:
        assert len(worker_pids(collector)) == 2
        offer(routers, collector.addresses[0], 3, 20, random.Random(11), 0)
        totals = collector.stop()
    finally:
        collector.kill()
        for r in routers:
            r.close()
    assert totals["parquet_written"] == 30 * 3 * 20
    check_kept_once_by_one_worker(out, routers, 2)
    assert not [p for p in out.rglob(".*.tmp")]


@needs_two_cores
def test_routers_sending_from_several_ports_stay_on_one_worker(tmp_path: Path) -> None:
    """Templates keyed without the port: each router sends its template from one port and its data
    from another; the data must reach the worker that has the template (all flows decoded)."""
    out = tmp_path / "flows"
    env = {
        "SHOAL_COLLECT__DECODER__TEMPLATE_KEY_INCLUDES_PORT": "false",
        "SHOAL_COLLECT__DECODER__PENDING_TTL_SECONDS": "3600",
    }
    collector = Shoal(out, ["127.0.0.1:0"], "--workers", "2", env=env)
    routers = [Exporter(n, 9 if n % 2 else 10, every=1000) for n in range(24)]
    data_socks = []
    try:
        target = collector.addresses[0]
        rng, first_id = random.Random(5), 0
        for r in routers:
            r.send(make_flows(rng, 5, r.templated.v6, first_id), target)  # template + data, port A
            first_id += 5
        for r in routers:
            data = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            data.bind((r.address, 0))
            data_socks.append(data)
            for _ in range(3):  # data only, port B
                r.send(make_flows(rng, 5, r.templated.v6, first_id), target, sock=data)
                first_id += 5
        totals = collector.stop()
    finally:
        collector.kill()
        for s in data_socks:
            s.close()
    assert totals["parquet_written"] == 24 * 4 * 5
    seen = collections.defaultdict(set)
    for worker, row in rows_by_worker(out):
        seen[str(bytes16_to_ip(row["exporter"]))].add(worker)
    assert len(seen) == 24 and all(len(w) == 1 for w in seen.values()), seen
    assert {w for ws in seen.values() for w in ws} == {0, 1}


@needs_two_cores
def test_templates_saved_per_worker_are_restored_whatever_worker_gets_the_exporter(tmp_path: Path) -> None:
    out = tmp_path / "flows"
    routers = [Exporter(n, 9 if n % 2 else 10, every=1000) for n in range(20)]
    rng = random.Random(9)
    try:
        first = Shoal(out, ["127.0.0.1:0"], "--workers", "2")
        try:
            next_id = offer(routers, first.addresses[0], 1, 5, rng, 0)  # with templates
            assert first.stop()["parquet_written"] == 100
        finally:
            first.kill()
        states = {p.name: json.loads(p.read_text()) for p in (out / ".shoal").glob("decoder-state.w*")}
        assert set(states) == {"decoder-state.w0", "decoder-state.w1"}
        saved = [{t["key"][0] for t in s["templates"]} for s in states.values()]
        assert saved[0] and saved[1] and not saved[0] & saved[1]  # each worker its own exporters
        # another port: the kernel hashes the exporters to workers afresh
        second = Shoal(out, ["127.0.0.1:0"], "--workers", "2")
        try:
            offer(
                routers, second.addresses[0], 2, 5, rng, next_id
            )  # data only: templates come from the files
            totals = second.stop()
        finally:
            second.kill()
    finally:
        for r in routers:
            r.close()
    assert totals["parquet_written"] == 200
    assert len(rows_by_worker(out)) == 300


# -- supervision ----------------------------------------------------------------------------------
@needs_two_cores
def test_a_dead_worker_is_started_again_on_its_own_sockets(tmp_path: Path) -> None:
    """SIGKILL (what the OOM killer sends) to a worker: the supervisor starts it again on the same
    sockets, so what exporters sent meanwhile waited in the kernel and is kept, on the same worker."""
    out, metrics = tmp_path / "flows", f"127.0.0.1:{free_port(socket.AF_INET)}"
    collector = Shoal(out, ["127.0.0.1:0"], "--workers", "2", "--metrics", metrics)
    routers = exporters(30, every=1)  # every packet carries its template: the new worker has none
    try:
        pids = worker_pids(collector)
        os.kill(pids[1], signal.SIGKILL)
        offer(routers, collector.addresses[0], 3, 10, random.Random(13), 0)
        wait_for(lambda: scrape(metrics).get(("shoal_collector_worker_restarts_total", (("worker", "1"),))) == 1,
                 what="worker 1 restarted")  # fmt: skip
        wait_for(lambda: get(metrics, "/readyz")[0] == 200, what="ready again")
        totals = collector.stop()
    finally:
        collector.kill()
        for r in routers:
            r.close()
    assert "worker 1 died (killed by signal 9); starting it again" in collector.stderr
    assert totals["parquet_written"] == 30 * 3 * 10
    check_kept_once_by_one_worker(out, routers, 2)


def child_workers(pid: int) -> list[int]:
    """The supervisor's worker processes, from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):  # gone meanwhile
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(int(child))
    return found


@needs_two_cores
def test_workers_dying_again_and_again_stop_the_collector(tmp_path: Path) -> None:
    metrics = f"127.0.0.1:{free_port(socket.AF_INET)}"
    collector = Shoal(tmp_path / "flows", ["127.0.0.1:0"], "--workers", "2", "--metrics", metrics)
    try:
        worker_pids(collector)
        for death in range(1, 5):
            os.kill(child_workers(collector.proc.pid)[0], signal.SIGKILL)
            if death < 4:
                wait_for(lambda n=death: get(metrics, "/readyz")[0] == 200
                         and sum(v for (name, _), v in scrape(metrics).items()
                                 if name == "shoal_collector_worker_restarts_total") == n,
                         what=f"restart {death}")  # fmt: skip
        out, err = collector.proc.communicate(timeout=120)
    finally:
        collector.kill()
    assert collector.proc.returncode == 1, err[-3000:]
    assert "4 worker deaths within 60 s: stopping the collector" in err
    assert "stopped:" in out  # the other worker flushed and reported


@needs_two_cores
def test_a_worker_that_cannot_start_fails_the_collector(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = shoal("collect", "--listen", "127.0.0.1:0", "--parquet", str(blocker / "flows"), "--workers", "2")
    clean_failure(res, 1, "worker 0 cannot start: SinkError", str(blocker / "flows"))
