"""UDP sockets read in batches with ``recvmmsg(2)``: one system call fetches up to ``recv_batch``
datagrams, which is what lets a Python process keep up with a router's export rate.

Buffers and the ``mmsghdr`` array are allocated once per socket and reused; lengths and source
addresses are read through numpy views of the same memory instead of per-message ctypes attribute access.
:meth:`BatchSocket.receive_block` hands the whole batch over as one :class:`Block` (a 2-D view of the
receive buffer plus length and source arrays): no Python object per datagram, which at ~45k datagrams/s
was a good part of the collector's CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from pipeline.collector.config import Endpoint

T = TypeVar("T")
OTHER = "other"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20
_SOCKADDR_SIZE = 28  # sockaddr_in6, large enough for sockaddr_in too


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_MMsgHdr), ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int

_LEN_OFFSET = _MMsgHdr.msg_len.offset
_FLAGS_OFFSET = _MsgHdr.msg_flags.offset
_NAMELEN_OFFSET = _MsgHdr.msg_namelen.offset
_KEY = np.dtype((np.void, 24))  # family, port and address of a sockaddr_in/in6: one sender


@dataclass
class Block:
    """The datagrams of one ``recvmmsg`` call, without a Python object per datagram.

    Row ``i`` of ``data`` holds datagram ``i`` in its first ``lengths[i]`` bytes (the rest is stale);
    ``sources[source[i]]`` is its sender. ``data`` may be a view of the socket's receive buffer: it is
    valid only until the next receive on that socket, so consumers copy what they keep.
    """

    data: np.ndarray
    """(n, max_datagram) uint8."""
    lengths: np.ndarray
    """(n,) int64 payload lengths."""
    source: np.ndarray
    """(n,) intp: index into ``sources``."""
    sources: list[tuple[str, int]]
    """Distinct (ip text, port) senders of this block."""
    received: float
    """Unix time of the receive call (collector clock)."""

    def __len__(self) -> int:
        return len(self.lengths)

    def select(self, rows: np.ndarray) -> Block:
        """The datagrams at ``rows`` (an index array or a boolean mask), as a new block: copied, but
        only up to the longest of them (a row is sized for the largest possible datagram)."""
        lengths = self.lengths[rows]
        width = max(1, int(lengths.max())) if len(lengths) else 1
        return Block(self.data[rows, :width], lengths, self.source[rows], self.sources, self.received)

    def datagrams(self, make: Callable[..., T]) -> list[T]:
        """Per-datagram objects ``make(payload, ip, port, received)``, for decoders without a block path."""
        data, sources, received = self.data, self.sources, self.received
        return [
            make(data[i, :length].tobytes(), *sources[s], received)
            for i, (length, s) in enumerate(zip(self.lengths.tolist(), self.source.tolist(), strict=True))
        ]


@dataclass
class ReceiveStats:
    """Plain counters of one listener (exported by the service's metrics)."""

    datagrams: int = 0
    bytes: int = 0
    truncated: int = 0
    errors: int = 0


def open_listener(
    endpoint: Endpoint, rcvbuf_bytes: int, reuse_port: bool = False, v6only: bool = True
) -> socket.socket:
    """A bound, non-blocking UDP socket for ``endpoint``.

    ``reuse_port``: SO_REUSEPORT, so that the collector's own worker sockets can be bound to the same
    port (the kernel admits only sockets of the same user into the group; the collector keeps every
    other ``shoal collect`` out with a port claim, :mod:`pipeline.collector.workers`). Without it no
    other socket can bind the port: no SO_REUSEADDR either, so another local user or a second
    ``shoal collect`` cannot silently take the feed. ``v6only`` False: an IPv6 socket that also
    receives IPv4 (dual-stack; senders come as IPv4 addresses)."""
    family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # v6-only when 0.0.0.0 listens on the same port too; else dual-stack.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        _set_rcvbuf(sock, rcvbuf_bytes)
        sock.bind((endpoint.host, endpoint.port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    # SO_RCVBUFFORCE lets root exceed net.core.rmem_max; fall back to the capped option.
    force = getattr(socket, "SO_RCVBUFFORCE", 33)
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class BatchSocket:
    """One bound, non-blocking UDP socket and its reusable ``recvmmsg`` buffers."""

    def __init__(
        self,
        endpoint: Endpoint,
        rcvbuf_bytes: int,
        batch: int,
        max_datagram: int,
        max_exporters: int = 64,
        block_calls: int = 4,
        reuse_port: bool = False,
        v6only: bool = True,
        sock: socket.socket | None = None,
    ) -> None:
        """Binds ``endpoint`` with :func:`open_listener` (``reuse_port``, ``v6only``), or adopts
        ``sock``, a listener already bound for it (a worker's share of a SO_REUSEPORT group)."""
        self.endpoint = endpoint
        if sock is None:
            sock = open_listener(endpoint, rcvbuf_bytes, reuse_port, v6only)
        else:
            sock.setblocking(False)
        self.sock = sock
        family = sock.family
        self.batch = batch
        self.block_calls = block_calls
        """``recvmmsg`` calls :meth:`receive_block` may chain into one block (while each comes back full)."""
        rows = batch * block_calls
        self.max_datagram = max_datagram
        self.stats = ReceiveStats()
        # An anonymous mapping: a page of a slot costs memory only once a datagram reaches it, so slots
        # sized for 64 KiB datagrams cost what the datagrams really use.
        self._map = mmap.mmap(-1, rows * max_datagram)
        self._buf = (ctypes.c_char * (rows * max_datagram)).from_buffer(self._map)
        self._names = (ctypes.c_char * (rows * _SOCKADDR_SIZE))()
        self._iov = (_IoVec * rows)()
        self._msgs = (_MMsgHdr * rows)()
        base = ctypes.addressof(self._buf)
        names = ctypes.addressof(self._names)
        for i in range(rows):
            self._iov[i].iov_base = base + i * max_datagram
            self._iov[i].iov_len = max_datagram
            hdr = self._msgs[i].msg_hdr
            hdr.msg_name = names + i * _SOCKADDR_SIZE
            hdr.msg_iov = ctypes.pointer(self._iov[i])
            hdr.msg_iovlen = 1
        self._call_starts = [
            ctypes.cast(ctypes.addressof(self._msgs[k * batch]), ctypes.POINTER(_MMsgHdr))
            for k in range(block_calls)
        ]
        self._mv = memoryview(self._buf).cast("B")
        self._rows = np.frombuffer(self._buf, dtype=np.uint8).reshape(rows, max_datagram)
        self._name_rows = np.frombuffer(self._names, dtype=np.uint8).reshape(rows, _SOCKADDR_SIZE)
        raw = np.frombuffer(self._msgs, dtype=np.uint8).reshape(rows, ctypes.sizeof(_MMsgHdr))
        self._lens = raw[:, _LEN_OFFSET : _LEN_OFFSET + 4].view(np.uint32).reshape(rows)
        self._flags = raw[:, _FLAGS_OFFSET : _FLAGS_OFFSET + 4].view(np.int32).reshape(rows)
        self._namelen = raw[:, _NAMELEN_OFFSET : _NAMELEN_OFFSET + 4].view(np.uint32).reshape(rows)
        self._namelen[:] = _SOCKADDR_SIZE
        self._sender_cache: dict[bytes, tuple[str, int]] = {}
        self.max_exporters = max_exporters
        self.exporter_packets: dict[str, int] = {}
        """Datagrams per source address; the first ``max_exporters`` keep their name, then ``other``."""
        self.inode = os.fstat(self.sock.fileno()).st_ino
        self.v6 = family == socket.AF_INET6
        self.address: tuple[str, int] = tuple(self.sock.getsockname()[:2])
        self.rcvbuf: int = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        """SO_RCVBUF granted by the kernel."""

    @property
    def label(self) -> str:
        """``HOST:PORT`` as bound (the real port when 0 was asked), for logs and metric labels."""
        host, port = self.address
        return f"[{host}]:{port}" if self.v6 else f"{host}:{port}"

    def fileno(self) -> int:
        return self.sock.fileno()

    def _resolve(self, raw: bytes) -> tuple[str, int]:
        """Source address bytes (sockaddr_in/in6) -> (ip text, port); memoised, bounded."""
        port = int.from_bytes(raw[2:4], "big")
        if self.v6:
            ip = socket.inet_ntop(socket.AF_INET6, raw[8:24])
            if ip.startswith("::ffff:") and "." in ip:
                ip = ip[7:]
        else:
            ip = socket.inet_ntop(socket.AF_INET, raw[4:8])
        if len(self._sender_cache) > 65536:  # bounded: spoofed sources cannot grow it forever
            self._sender_cache.clear()
        self._sender_cache[raw] = (ip, port)
        return ip, port

    def _count_exporter(self, ip: str, n: int) -> None:
        counts = self.exporter_packets
        if ip in counts or len(counts) < self.max_exporters:
            counts[ip] = counts.get(ip, 0) + n
        else:
            counts[OTHER] = counts.get(OTHER, 0) + n

    def receive(self, make: Callable[..., T], received: float) -> list[T]:
        """Up to ``batch`` datagrams waiting now, each as ``make(payload, source ip, source port,
        received)``; [] if none.

        Truncated datagrams (larger than ``max_datagram``) are counted and left out: decoding a cut
        packet would produce wrong flows.
        """
        n = _recvmmsg(self.sock.fileno(), self._msgs, self.batch, MSG_DONTWAIT, None)
        if n <= 0:
            if n < 0:
                err = ctypes.get_errno()
                if err not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    self.stats.errors += 1
            return []
        lens = self._lens[:n].tolist()
        skip = set((self._flags[:n] & MSG_TRUNC).nonzero()[0].tolist())
        # The kernel rewrites msg_namelen on each call; reset it so the next call may fill a full name.
        self._namelen[:n] = _SOCKADDR_SIZE
        names = ctypes.string_at(self._names, n * _SOCKADDR_SIZE)
        mv, size, cache, resolve = self._mv, self.max_datagram, self._sender_cache, self._resolve
        out: list[T] = []
        total = 0
        last_key, last, run = b"", ("", 0), 0
        for i, length in enumerate(lens):
            if skip and i in skip:
                continue
            key = names[i * _SOCKADDR_SIZE : i * _SOCKADDR_SIZE + 24]
            if key != last_key:
                if run:
                    self._count_exporter(last[0], run)
                last_key, run = key, 0
                last = cache.get(key) or resolve(key)
            run += 1
            out.append(make(mv[i * size : i * size + length].tobytes(), last[0], last[1], received))
            total += length
        if run:
            self._count_exporter(last[0], run)
        self.stats.truncated += len(skip)
        self.stats.datagrams += len(out)
        self.stats.bytes += total
        return out

    def receive_block(self, received: float) -> Block | None:
        """Datagrams waiting now as one :class:`Block` (None if none), counted like :meth:`receive`:
        up to ``block_calls`` ``recvmmsg`` calls of ``batch`` datagrams, as long as each one comes
        back full. Truncated datagrams are counted and left out."""
        n = 0
        for start in self._call_starts:  # bigger blocks make every later per-block step cheaper
            got = _recvmmsg(self.sock.fileno(), start, self.batch, MSG_DONTWAIT, None)
            if got < 0:
                err = ctypes.get_errno()
                if err not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    self.stats.errors += 1
            if got <= 0:
                break
            n += got
            if got < self.batch:
                break
        if n == 0:
            return None
        lengths = self._lens[:n].astype(np.int64)
        keys = np.ascontiguousarray(self._name_rows[:n, :24]).view(_KEY).ravel()
        self._namelen[:n] = _SOCKADDR_SIZE
        data = self._rows[:n]
        truncated = self._flags[:n] & MSG_TRUNC
        if truncated.any():
            keep = truncated == 0
            self.stats.truncated += n - int(keep.sum())
            lengths, keys = lengths[keep], keys[keep]
            if not len(lengths):
                return None
            data = data[keep, : max(1, int(lengths.max()))]  # copy only what the rows hold
        if (keys == keys[0]).all():
            unique, source = keys[:1], np.zeros(len(keys), dtype=np.intp)
        else:  # in order of first appearance, so the capped exporter labels go to the first seen
            unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
            order = np.argsort(first)
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            unique, source = unique[order], rank[inverse.ravel()]
        cache, sources = self._sender_cache, []
        for key in unique.tolist():
            sources.append(cache.get(key) or self._resolve(key))
        if len(sources) == 1:
            self._count_exporter(sources[0][0], len(lengths))
        else:
            for (ip, _), count in zip(
                sources, np.bincount(source, minlength=len(sources)).tolist(), strict=True
            ):
                if count:
                    self._count_exporter(ip, count)
        self.stats.datagrams += len(lengths)
        self.stats.bytes += int(lengths.sum())
        return Block(data, lengths, source, sources, received)

    def close(self) -> None:
        self.sock.close()
