"""IPv6 ranges return every covering range, compared with Python's ``ipaddress``: prefixes from /0
to /128 nested, abutting and crowded into one /32 or one /64, at both ends of the address space and
in the IPv4-mapped block, looked up exactly at range ends and one address either side of them; and
through the address table, IPv6 and IPv4-mapped addresses mixed in one column."""

from __future__ import annotations

import ipaddress

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.addresses import Addresses
from detectors.index import AddressTable, v6_ranges
from detectors.intervals import V6_LEVELS, V6Intervals

TOP = 2**128 - 1
# Where ranges start: the ends of the space, the IPv4-mapped block, /32, /48 and /64 edges.
POINTS = [int(ipaddress.IPv6Address(a)) for a in (
    "::", "::1", "::ffff:0.0.0.0", "::ffff:10.0.0.1", "::ffff:255.255.255.255", "2001:db8::", "2001:db8::1",
    "2001:db8:0:1::", "2001:db8:1::", "2001:db8:0:0:8000::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
    "2001:db9::", "8000::", "ffff:ffff:ffff:ffff::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
)]  # fmt: skip
PREFIXES = [0, 1, 15, 16, 17, 31, 32, 33, 47, 48, 49, 56, 63, 64, 65, 96, 120, 127, 128, 128, 128]
OFFSETS = [0, 0, 1, 2**16, 2**64, 2**64 - 1, 2**80, 2**96]
DOC = int(ipaddress.IPv6Address("2001:db8::"))


@st.composite
def v6_networks(draw) -> ipaddress.IPv6Network:
    offset = draw(st.sampled_from(OFFSETS) | st.integers(0, 2**20))
    address = (draw(st.sampled_from(POINTS)) + offset) % 2**128
    return ipaddress.IPv6Network((address, draw(st.sampled_from(PREFIXES))), strict=False)


@st.composite
def shared_slash32(draw) -> ipaddress.IPv6Network:
    """Within 2001:db8::/32, few distinct /48s and /64s, so ranges crowd and nest."""
    high = draw(st.sampled_from([0, 1, 0xFFFF])) << 80 | draw(st.sampled_from([0, 1, 2, 0xFFFF])) << 64
    address = (
        DOC | high | draw(st.sampled_from([0, 1, 2, 0x8000 << 48, 2**64 - 1]) | st.integers(0, 2**64 - 1))
    )
    return ipaddress.IPv6Network((address, draw(st.sampled_from([33, 40, 48, 56, 63, 64, 96, 127, 128]))),
                                 strict=False)  # fmt: skip


def probes(networks: list[ipaddress.IPv6Network], extra: list[int]) -> list[int]:
    """Each range's first and last address and their neighbours, the start points and theirs, and
    ``extra``."""
    out = set(extra)
    for net in networks:
        first, last = int(net.network_address), int(net.broadcast_address)
        out.update({first, last, max(first - 1, 0), min(last + 1, TOP)})
    for point in POINTS:
        out.update({point, max(point - 1, 0), min(point + 1, TOP)})
    return sorted(out)


def packed(addresses: list[int]) -> np.ndarray:
    """(n, 16) uint8 in network order, as a flow column holds them."""
    raw = b"".join(a.to_bytes(16, "big") for a in addresses)
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, 16)


def brute(networks: list, payload: list[int], addresses: list[int], rows: list[int]) -> set[tuple[int, int]]:
    bounds = [(int(n.network_address), int(n.broadcast_address)) for n in networks]
    return {(row, payload[k]) for row in rows for k, (a, b) in enumerate(bounds) if a <= addresses[row] <= b}


def found(table: V6Intervals, addresses: list[int], rows: np.ndarray) -> set[tuple[int, int]]:
    got_rows, got_payload = table.lookup(packed(addresses), rows)
    pairs = list(zip(got_rows.tolist(), got_payload.tolist(), strict=True))
    assert len(pairs) == len(set(pairs)), "a range reported twice for one address"
    return set(pairs)


def build(networks: list[ipaddress.IPv6Network], payload: list[int]) -> V6Intervals:
    return V6Intervals.build(*v6_ranges(networks), payload=np.array(payload, dtype=np.int32))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(v6_networks() | shared_slash32(), min_size=1, max_size=60),
    st.lists(st.integers(0, TOP) | st.integers(DOC, DOC + 2**96 - 1), max_size=20),
    st.data(),
)
def test_lookup_equals_ipaddress(networks, extra, data) -> None:
    """Payloads may be negative (constrained entries are): each is returned as given."""
    payload = data.draw(st.permutations(range(-(len(networks) // 2), len(networks) - len(networks) // 2)))
    addresses = probes(networks, extra)
    rows = sorted(data.draw(st.sets(st.sampled_from(range(len(addresses))), min_size=1)))
    table = build(networks, payload)
    assert found(table, addresses, np.array(rows, dtype=np.int64)) == brute(
        networks, payload, addresses, rows
    )


def test_every_level_is_used_and_answers() -> None:
    """Nested prefixes, one per level and either side of each level's width, plus neighbours."""
    base = ipaddress.IPv6Address("2001:db8:aaaa:bbbb::")
    networks = [
        ipaddress.IPv6Network((base, p), strict=False)
        for p in (128, 127, 64, 63, 56, 48, 40, 32, 20, 16, 8, 0)
    ]
    networks += [
        ipaddress.IPv6Network("2001:db8:aaaa:bbbc::/64"),
        ipaddress.IPv6Network("2001:db8:aaaa:bbbb::1/128"),
    ]
    table = build(networks, list(range(len(networks))))
    assert sorted(64 - table.levels[:, 0]) == sorted(V6_LEVELS)
    addresses = probes(networks, [int(base) + 2**64 * k + 5 for k in range(-3, 4)])
    rows = list(range(len(addresses)))
    expected = brute(networks, list(range(len(networks))), addresses, rows)
    assert found(table, addresses, np.arange(len(addresses))) == expected
    assert {p for _, p in expected} == set(range(len(networks)))  # every range was hit somewhere


def test_crowded_prefixes_and_many_keys() -> None:
    """Thousands of /128s in one /64, hundreds of /64s and /56s in one /48, and 20,000 scattered
    /64s (a large table: long probe runs, fingerprint collisions), against a vectorised brute force."""
    rng = np.random.default_rng(11)
    crowded64 = DOC | 7 << 64
    addrs = [crowded64 | int(x) for x in rng.choice(2**16, 3000, replace=False)]
    networks = [ipaddress.IPv6Network(a) for a in addrs]
    networks += [
        ipaddress.IPv6Network((DOC | 9 << 80 | int(x) << 64, 64))
        for x in rng.choice(2**16, 300, replace=False)
    ]
    networks += [
        ipaddress.IPv6Network((DOC | 9 << 80 | int(x) << 72, 56)) for x in rng.choice(256, 40, replace=False)
    ]
    networks += [
        ipaddress.IPv6Network((int(x) << 64, 64)) for x in rng.integers(2**61, 2**62, 20_000, dtype=np.uint64)
    ]
    networks.append(ipaddress.IPv6Network((crowded64, 112)))  # nested over part of the crowd
    addresses = sorted(set(probes(networks, []) + [crowded64 | int(x) for x in rng.integers(0, 2**16, 2000)]
                           + [DOC | 9 << 80 | int(x) << 64 | int(y) for x, y in zip(rng.integers(0, 2**16, 2000),
                                                                        rng.integers(0, 2**63, 2000), strict=True)]))  # fmt: skip
    table = build(networks, list(range(len(networks))))
    first = np.array([int(n.network_address) for n in networks], dtype=object)
    last = np.array([int(n.broadcast_address) for n in networks], dtype=object)
    expected = set()
    for row, a in enumerate(addresses):
        expected.update((row, int(k)) for k in np.flatnonzero((first <= a) & (a <= last)))
    assert found(table, addresses, np.arange(len(addresses))) == expected


def test_empty_and_whole_space() -> None:
    addresses = [0, 1, DOC, TOP]
    empty = V6Intervals.build(*(np.empty(0, np.uint64),) * 4, payload=np.empty(0, np.int32))
    assert found(empty, addresses, np.arange(4)) == set()
    whole = build([ipaddress.IPv6Network("::/0")], [5])
    assert found(whole, addresses, np.arange(4)) == {(r, 5) for r in range(4)}


def _reference(networks: list, address: ipaddress.IPv6Address) -> set[int]:
    """The flow schema's rule: an IPv4-mapped address is the IPv4 address it maps."""
    as_seen = address.ipv4_mapped or address
    return {k for k, net in enumerate(networks) if net.version == as_seen.version and as_seen in net}


V4_NETWORKS = st.builds(
    lambda a, p: ipaddress.IPv4Network((a, p), strict=False),
    st.sampled_from([0, 0x0A000001, 0xFFFFFFFF]),
    st.sampled_from([0, 8, 24, 32]),
)
MAPPED = st.integers(0xFFFF << 32, (0xFFFF << 32) + 2**32 - 1)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(v6_networks() | shared_slash32() | V4_NETWORKS, min_size=1, max_size=40),
    st.lists(st.integers(0, TOP) | MAPPED, max_size=20),
)
def test_address_table_mixes_ipv6_and_ipv4_mapped(networks, extra) -> None:
    """IPv6 ranges over the IPv4-mapped block do not answer mapped addresses (those are IPv4), as
    ``ipaddress`` says of an IPv4 address and an IPv6 network."""
    table = AddressTable.build(networks, direct=True)
    addresses = probes([n for n in networks if n.version == 6], extra)
    got_rows, got_payload = table.lookup(Addresses(packed(addresses)))
    got = set(zip(got_rows.tolist(), got_payload.tolist(), strict=True))
    expected = {
        (row, k) for row, a in enumerate(addresses) for k in _reference(networks, ipaddress.IPv6Address(a))
    }
    assert got == expected


def test_fingerprint_collisions_are_not_taken_for_hits() -> None:
    """A /prefix's slot holds only a fingerprint of it: an address whose /64 holds no boundary but
    shares a fingerprint with one that does must still miss. 8,000 /127s at the tops of their /64s
    (each range's end starts the next /64: the slot most easily mistaken) and 12M random addresses,
    among which fingerprint collisions occur (fixed seed)."""
    rng = np.random.default_rng(2)
    tops = np.unique(rng.integers(0, 2**64 - 1, 8000, dtype=np.uint64))
    last_lo = np.full(len(tops), 2**64 - 1, dtype=np.uint64)
    table = V6Intervals.build(
        tops, last_lo - np.uint64(1), tops, last_lo, np.arange(len(tops), dtype=np.int32)
    )
    for _ in range(4):
        words = np.empty((3_000_000, 2), dtype=">u8")
        words[:, 0] = rng.integers(0, 2**64 - 1, len(words), dtype=np.uint64)
        words[:, 1] = rng.integers(0, 2**64 - 1, len(words), dtype=np.uint64) | np.uint64(2**63)
        words[::1000, 1] = 2**64 - 1  # some at the top of their /64
        hits = np.isin(words[:, 0].astype(np.uint64), tops) & (words[:, 1] >= np.uint64(2**64 - 2))
        rows, payload = table.lookup(words.view(np.uint8).reshape(-1, 16), np.arange(len(words)))
        assert np.array_equal(rows, np.flatnonzero(hits))
        assert np.array_equal(tops[payload], words[rows, 0].astype(np.uint64))
