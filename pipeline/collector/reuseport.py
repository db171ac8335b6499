"""One UDP port shared by the collector's worker processes (SO_REUSEPORT), and by nobody else.

The supervisor binds every worker's socket itself, in worker order, and hands each worker its own:
the kernel spreads datagrams over the group by a hash of the sender, so one exporter always reaches
the same worker and its templates stay there. Which hash follows the decoder's template key:

* templates keyed by (address, port, domain), the default: the kernel's own hash of the 4-tuple, so
  each export stream of a router (Junos sends one per line card) may go to another worker;
* templates keyed by (address, domain) (``decoder.template_key_includes_port = false``, for routers
  that send templates and data from different ports): a classic BPF program attached to the group
  picks the worker from the source address alone.

SO_REUSEPORT admits only sockets of the same user into the group (the kernel checks). A second
``shoal collect`` of the same user would be admitted too, so every collector with workers first
claims the port: an abstract Unix socket named after it (per network namespace, like the port, and
released by the kernel when the process dies, so no stale lock file can block a restart).
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct

from pipeline.collector.config import Endpoint
from pipeline.collector.receiver import open_listener

SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)

# Classic BPF opcodes (linux/filter.h) and the offset that addresses the network header.
_LD_W_ABS, _LD_B_ABS = 0x20, 0x30
_ALU_RSH_K, _ALU_MUL_K, _ALU_MOD_K, _ALU_XOR_X = 0x74, 0x24, 0x94, 0xAC
_JMP_JA, _JMP_JEQ_K, _MISC_TAX, _RET_A = 0x05, 0x15, 0x07, 0x16
_NET = -0x100000  # SKF_NET_OFF


class PortClaimed(OSError):
    """Another ``shoal collect`` (with workers) serves this port on this host."""


class _Instruction(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


def address_hash_program(groups: int) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions returning the index of the socket for a datagram: a
    multiplicative hash of its source address (IPv4, or the four words of an IPv6 address XORed)
    modulo ``groups``. The reuseport hook runs it with the data at the UDP payload; the IP header
    is reached through the network-header offset, so a dual-stack socket sees IPv4 senders as such."""
    net = _NET & 0xFFFFFFFF
    return [
        (_LD_B_ABS, 0, 0, net),  # A = first byte of the IP header
        (_ALU_RSH_K, 0, 0, 4),  # A = IP version
        (_JMP_JEQ_K, 2, 0, 6),  # IPv6: skip the IPv4 load
        (_LD_W_ABS, 0, 0, net + 12),  # A = IPv4 source
        (_JMP_JA, 0, 0, 10),  # to the hash
        (_LD_W_ABS, 0, 0, net + 8),  # IPv6 source, word by word, XORed
        (_MISC_TAX, 0, 0, 0),
        (_LD_W_ABS, 0, 0, net + 12),
        (_ALU_XOR_X, 0, 0, 0),
        (_MISC_TAX, 0, 0, 0),
        (_LD_W_ABS, 0, 0, net + 16),
        (_ALU_XOR_X, 0, 0, 0),
        (_MISC_TAX, 0, 0, 0),
        (_LD_W_ABS, 0, 0, net + 20),
        (_ALU_XOR_X, 0, 0, 0),
        (_ALU_MUL_K, 0, 0, 0x9E3779B1),  # spread neighbouring addresses (Fibonacci hashing)
        (_ALU_RSH_K, 0, 0, 16),
        (_ALU_MOD_K, 0, 0, groups),
        (_RET_A, 0, 0, 0),
    ]


def attach_address_hash(sock: socket.socket, groups: int) -> None:
    """Make ``sock``'s SO_REUSEPORT group pick its member by source address (see the module)."""
    program = address_hash_program(groups)
    filters = (_Instruction * len(program))(*(_Instruction(*i) for i in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(filters))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def claim_port(port: int) -> socket.socket:
    """Hold the claim on UDP ``port`` for as long as the returned socket stays open."""
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        claim.bind(f"\0shoal-collect/udp/{port}")
    except OSError as exc:
        claim.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortClaimed(
                errno.EADDRINUSE, f"UDP port {port} is served by another shoal collect on this host"
            ) from None
        raise
    return claim


def bind_group(
    endpoint: Endpoint,
    members: int,
    rcvbuf_bytes: int,
    v6only: bool,
    by_address: bool,
    claims: dict[int, socket.socket],
) -> list[socket.socket]:
    """``members`` sockets on ``endpoint``, in worker order, after claiming the port (kept in
    ``claims`` by port, so listeners sharing a port claim it once). A port 0 endpoint is claimed
    once the kernel has picked its port (nobody else can know it before)."""
    if endpoint.port and endpoint.port not in claims:
        claims[endpoint.port] = claim_port(endpoint.port)
    sockets: list[socket.socket] = []
    try:
        for _ in range(members):
            sock = open_listener(endpoint, rcvbuf_bytes, reuse_port=True, v6only=v6only)
            sockets.append(sock)
            port = sock.getsockname()[1]
            if not endpoint.port and port not in claims:
                claims[port] = claim_port(port)
            endpoint = Endpoint(endpoint.host, port)
        if by_address and members > 1:
            attach_address_hash(sockets[0], members)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
