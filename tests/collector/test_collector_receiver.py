import socket
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
