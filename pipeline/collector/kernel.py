"""Kernel-side UDP drops per socket, from ``/proc/net/udp`` and ``/proc/net/udp6``.

The ``drops`` column counts datagrams the kernel discarded because the socket's receive queue was
full: the loss an operator cannot see anywhere else. Sockets are found by inode, so several
collectors (or SO_REUSEPORT siblings) on one port are told apart.
"""

from __future__ import annotations

from collections.abc import Iterable

PROC_FILES = ("/proc/net/udp", "/proc/net/udp6")


def socket_drops(inodes: Iterable[int], files: Iterable[str] = PROC_FILES) -> dict[int, int]:
    """``{inode: drops}`` for the given socket inodes (missing sockets are absent from the result)."""
    wanted = set(inodes)
    found: dict[int, int] = {}
    for path in files:
        try:
            with open(path) as fh:
                next(fh, None)  # header
                for line in fh:
                    cols = line.split()
                    if len(cols) < 13:
                        continue
                    inode = int(cols[9])
                    if inode in wanted:
                        found[inode] = int(cols[12])
        except OSError:
            continue
    return found
