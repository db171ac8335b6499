import os
import socket
import subprocess
import time

import pytest

from pipeline.collector.config import Endpoint
from pipeline.collector.kernel import socket_drops
from pipeline.collector.receiver import BatchSocket


def _drain(bs: BatchSocket, expect: int, timeout: float = 2.0):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < expect and time.monotonic() < deadline:
        got += bs.receive(lambda p, ip, port, t: (p, ip, port), 0.0)
        time.sleep(0.001)
    return got


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_recvmmsg_returns_payloads_and_senders_in_order(host):
    bs = BatchSocket(Endpoint(host, 0), 1 << 20, 16, 2048)
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as tx:
            payloads = [bytes([i]) * (i + 1) for i in range(50)]
            for p in payloads:
                tx.sendto(p, bs.address)
            got = _drain(bs, 50)
            assert [g[0] for g in got] == payloads
            assert {(g[1], g[2]) for g in got} == {(host, tx.getsockname()[1])}
        assert bs.stats.datagrams == 50
        assert bs.stats.bytes == sum(len(p) for p in payloads)
    finally:
        bs.close()


def test_oversized_datagrams_are_counted_not_returned():
    bs = BatchSocket(Endpoint("127.0.0.1", 0), 1 << 20, 8, 600)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(b"a" * 100, bs.address)
            tx.sendto(b"b" * 601, bs.address)
            tx.sendto(b"c" * 600, bs.address)
            time.sleep(0.05)
            got = _drain(bs, 2)
        assert [g[0] for g in got] == [b"a" * 100, b"c" * 600]
        assert bs.stats.truncated == 1
    finally:
        bs.close()


def test_v4_and_v6_listeners_share_a_port():
    v4 = BatchSocket(Endpoint("127.0.0.1", 0), 1 << 20, 8, 2048)
    try:
        v6 = BatchSocket(Endpoint("::1", v4.address[1]), 1 << 20, 8, 2048)
        v6.close()
    finally:
        v4.close()


def test_rcvbuf_is_applied():
    bs = BatchSocket(Endpoint("127.0.0.1", 0), 8 << 20, 8, 2048)
    try:
        assert bs.rcvbuf >= 8 << 20  # Linux doubles the request for bookkeeping
    finally:
        bs.close()


def test_kernel_drops_are_read_for_this_socket():
    bs = BatchSocket(Endpoint("127.0.0.1", 0), 4096, 8, 2048)
    other = BatchSocket(Endpoint("127.0.0.1", 0), 1 << 20, 8, 2048)
    try:
        assert socket_drops([bs.inode]) == {bs.inode: 0}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for _ in range(500):
                tx.sendto(b"x" * 1000, bs.address)
        drops = socket_drops([bs.inode, other.inode])
        queued = len(_drain(bs, 500, timeout=0.3))
        assert drops[bs.inode] > 0
        assert drops[bs.inode] + queued == 500
        assert drops[other.inode] == 0
    finally:
        bs.close()
        other.close()


def _drain_blocks(bs: BatchSocket, expect: int, timeout: float = 2.0) -> list[tuple[bytes, str, int]]:
    """Datagrams of successive ``receive_block`` calls as (payload, ip, port), copied out at once
    (a block is a view of the socket's buffer, valid until the next receive)."""
    got, deadline = [], time.monotonic() + timeout
    while len(got) < expect and time.monotonic() < deadline:
        block = bs.receive_block(0.0)
        if block is not None:
            assert block.data.shape[1] == bs.max_datagram
            for row, length, src in zip(block.data, block.lengths, block.source, strict=True):
                got.append((row[:length].tobytes(), *block.sources[src]))
        time.sleep(0.001)
    return got


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_receive_block_returns_rows_lengths_and_senders_in_order(host):
    bs = BatchSocket(Endpoint(host, 0), 1 << 20, 16, 2048)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with (
            socket.socket(family, socket.SOCK_DGRAM) as a,
            socket.socket(family, socket.SOCK_DGRAM) as b,
        ):
            a.bind((host, 0))
            b.bind((host, 0))
            sent = []
            for i in range(50):
                tx = b if i % 3 == 1 else a
                payload = bytes([i]) * (i * 7 + 1)
                tx.sendto(payload, bs.address)
                sent.append((payload, host, tx.getsockname()[1]))
            got = _drain_blocks(bs, 50)
        assert got == sent
        assert bs.stats.datagrams == 50
        assert bs.stats.bytes == sum(len(p) for p, _, _ in sent)
        assert bs.exporter_packets == {host: 50}
    finally:
        bs.close()


def test_receive_block_leaves_out_truncated_and_names_senders_by_first_appearance():
    bs = BatchSocket(Endpoint("127.0.0.1", 0), 1 << 20, 8, 600, max_exporters=1)
    try:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
        ):
            b.bind(("127.0.0.3", 0))
            a.bind(("127.0.0.2", 0))
            b.sendto(b"b" * 100, bs.address)
            a.sendto(b"a" * 601, bs.address)
            a.sendto(b"a" * 600, bs.address)
            b.sendto(b"b" * 10, bs.address)
            time.sleep(0.05)
            block = bs.receive_block(1.5)
        assert block is not None and block.received == 1.5
        assert block.lengths.tolist() == [100, 600, 10]
        assert block.data.shape == (3, 600)  # rows copied out around the truncated one, no wider
        assert [block.sources[s][0] for s in block.source] == ["127.0.0.3", "127.0.0.2", "127.0.0.3"]
        assert bs.stats.truncated == 1 and bs.stats.datagrams == 3 and bs.stats.bytes == 710
        # the first sender seen keeps its label, later ones fold into "other"
        assert bs.exporter_packets == {"127.0.0.3": 2, "other": 1}
        kept = block.select(block.source == block.source[0])
        assert kept.lengths.tolist() == [100, 10] and kept.data.shape == (2, 100)
        assert [d[0] for d in kept.datagrams(lambda *d: d)] == [b"b" * 100, b"b" * 10]
        assert bs.receive_block(0.0) is None
    finally:
        bs.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_another_socket_cannot_bind_the_listening_port(host):
    """Issue 15, item 5: another local process (or a second collector) binding the same port would
    silently take the feed; without reuse asked for, the kernel refuses it, even with SO_REUSEADDR or
    SO_REUSEPORT on its side."""
    bs = BatchSocket(Endpoint(host, 0), 1 << 20, 8, 2048)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        for option in (socket.SO_REUSEADDR, socket.SO_REUSEPORT):
            with socket.socket(family, socket.SOCK_DGRAM) as thief:
                thief.setsockopt(socket.SOL_SOCKET, option, 1)
                with pytest.raises(OSError):
                    thief.bind(bs.address[:2])
    finally:
        bs.close()


def test_collector_workers_share_a_port_when_they_ask_for_it():
    first = BatchSocket(Endpoint("127.0.0.1", 0), 1 << 20, 8, 2048, reuse_port=True)
    try:
        second = BatchSocket(Endpoint("127.0.0.1", first.address[1]), 1 << 20, 8, 2048, reuse_port=True)
        second.close()
    finally:
        first.close()


def test_ipv6_wildcard_alone_receives_ipv4_exporters():
    """Issue 15, item 18: ``[::]:PORT`` alone is dual-stack; IPv4 senders appear as IPv4."""
    bs = BatchSocket(Endpoint("::", 0), 1 << 20, 8, 2048, v6only=False)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(b"v4 packet", ("127.0.0.1", bs.address[1]))
            got = _drain(bs, 1)
        assert [(g[0], g[1]) for g in got] == [(b"v4 packet", "127.0.0.1")]
    finally:
        bs.close()


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
                    reason="needs root (to run a process as another user) and the system Python")  # fmt: skip
def test_another_user_cannot_join_the_workers_port():
    """SO_REUSEPORT sharing is for processes of the same user: the kernel refuses anyone else."""
    workers = BatchSocket(Endpoint("127.0.0.1", 0), 1 << 20, 8, 2048, reuse_port=True)
    try:
        code = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n"
            f"try:\n    s.bind(('127.0.0.1', {workers.address[1]}))\nexcept OSError:\n    sys.exit(3)\n"
        )
        # the system Python: the project's virtualenv may not be readable by the other user
        res = subprocess.run(["/usr/bin/python3", "-c", code], preexec_fn=lambda: os.setuid(65534), check=False,
                             capture_output=True, timeout=30, cwd="/")  # fmt: skip
        assert res.returncode == 3, res.stderr
    finally:
        workers.close()
