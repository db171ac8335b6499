"""The IPv4 /24 table and its second-level blocks return every covering range, compared with a brute
force over the ranges, where prefixes straddle, fill or crowd /24 blocks (every block tier)."""

from __future__ import annotations

import ipaddress

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.index import AddressTable, v4_ranges
from detectors.intervals import TIER_WIDTHS, V4Intervals, resident_bytes

# Neighbouring /24s, the first and the last: prefixes straddle and nest at block edges.
BLOCKS = [0x00000000, 0x0A000000, 0x0A000100, 0x0A000200, 0x0A00FF00, 0x0A010000, 0xFFFFFF00]
PREFIXES = [0, 8, 16, 22, 23, 24, 25, 26, 28, 30, 31, 32, 32, 32]


@st.composite
def v4_networks(draw) -> ipaddress.IPv4Network:
    address = draw(st.sampled_from(BLOCKS)) | draw(st.integers(0, 255))
    return ipaddress.IPv4Network((address, draw(st.sampled_from(PREFIXES))), strict=False)


def probes(networks: list[ipaddress.IPv4Network], extra: list[int]) -> np.ndarray:
    """Each range's edges and their neighbours, block edges, and some random addresses."""
    out = set(extra)
    for net in networks:
        first, last = int(net.network_address), int(net.broadcast_address)
        out.update({first, last, max(first - 1, 0), min(last + 1, 2**32 - 1)})
    for block in BLOCKS:
        out.update({block, block + 255, max(block - 1, 0), min(block + 256, 2**32 - 1)})
    return np.array(sorted(out), dtype=np.uint32)


def brute(networks: list[ipaddress.IPv4Network], keys: np.ndarray) -> set[tuple[int, int]]:
    bounds = [(int(n.network_address), int(n.broadcast_address)) for n in networks]
    return {
        (row, k) for row, key in enumerate(keys.tolist()) for k, (a, b) in enumerate(bounds) if a <= key <= b
    }


def found(table: V4Intervals, keys: np.ndarray) -> set[tuple[int, int]]:
    rows, payload = table.lookup(keys)
    pairs = list(zip(rows.tolist(), payload.tolist(), strict=True))
    assert len(pairs) == len(set(pairs)), "a range reported twice for one address"
    return set(pairs)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(v4_networks(), min_size=1, max_size=90),
    st.lists(st.integers(0, 2**32 - 1), max_size=20),
)
def test_direct_table_equals_brute_force(networks, extra) -> None:
    first, last = v4_ranges(networks)
    table = V4Intervals.build(first, last, np.arange(len(networks), dtype=np.int32), direct=True)
    keys = probes(networks, extra)
    assert found(table, keys) == brute(networks, keys)


@settings(max_examples=100, deadline=None)
@given(st.lists(v4_networks(), min_size=1, max_size=40))
def test_search_path_equals_direct_table(networks) -> None:
    """Allowlists use the search path: same answers as the /24 table."""
    direct = AddressTable.build(networks, direct=True).v4
    search = AddressTable.build(networks).v4
    assert search.level1 is None
    keys = probes(networks, [])
    assert found(direct, keys) == found(search, keys) == brute(networks, keys)


def test_every_block_tier_is_used_and_answers() -> None:
    """/32s crowded into one /24 each: 1, 2*TIER_WIDTHS[0], 60 addresses (inline, sorted and dense)."""
    networks = []
    for block, count in ((0x0A000000, 1), (0x0A000100, TIER_WIDTHS[0]), (0x0A000200, 60)):
        networks += [ipaddress.IPv4Network(block + 4 * i + 1) for i in range(count)]
    networks.append(ipaddress.IPv4Network("10.0.0.0/22"))  # covers all three blocks and more
    first, last = v4_ranges(networks)
    table = V4Intervals.build(first, last, np.arange(len(networks), dtype=np.int32))
    assert [len(base) for base in table.tier_base] == [1, 1]
    assert table.level1 is not None
    assert int(np.count_nonzero(table.level1 >> np.uint64(62) == 3)) == 1  # one inline block
    keys = np.arange(0x0A000000 - 2, 0x0A000400 + 2, dtype=np.uint32)
    assert found(table, keys) == brute(networks, keys)


def test_untouched_blocks_cost_no_memory() -> None:
    """The /24 table is 128 MiB of address space, but only its written pages become resident (two
    pages here; 2 MiB each at most with transparent huge pages)."""
    networks = [ipaddress.IPv4Network("192.0.2.7"), ipaddress.IPv4Network("198.51.100.0/24")]
    first, last = v4_ranges(networks)
    table = V4Intervals.build(first, last, np.arange(2, dtype=np.int32))
    assert table.level1 is not None
    assert table.nbytes(fixed=False) < 1024 < table.nbytes() - table.nbytes(fixed=False)
    resident = resident_bytes(table.level1)  # before any read maps the zero page
    assert resident is not None and 0 < resident <= 4 * 2**20
    assert np.count_nonzero(table.level1) == 2


def test_many_nested_and_crowded_ranges_equal_brute_force() -> None:
    """Thousands of ranges in a few /16s (nested /16-/32s, crowded /24s, a range to the last address):
    the compiled build's galloping searches and block tiers against a vectorised brute force."""
    rng = np.random.default_rng(14)
    base = np.uint64(0x0A000000)
    prefix = rng.choice([16, 20, 24, 26, 28, 30, 31, 32, 32, 32, 32, 32], 3000)
    first = (base + rng.integers(0, 1 << 18, 3000).astype(np.uint64)) & ~(
        (np.uint64(1) << (32 - prefix).astype(np.uint64)) - np.uint64(1)
    )
    last = first | ((np.uint64(1) << (32 - prefix).astype(np.uint64)) - np.uint64(1))
    crowded = np.arange(0x0A000500, 0x0A000600, 5, dtype=np.uint64)  # one /24 of 52 /32s: a dense block
    first = np.concatenate([first, crowded, [0xFFFFFF00, 0]]).astype(np.uint64)
    last = np.concatenate([last, crowded, [0xFFFFFFFF, 0x0A0000FF]]).astype(np.uint64)
    table = V4Intervals.build(first, last, np.arange(len(first), dtype=np.int32))
    assert len(table.tier_base) == 2 and all(len(b) for b in table.tier_base)  # every tier used
    keys = np.unique(np.concatenate([first, last, last + np.uint64(1), first - np.uint64(1),
                                     rng.integers(0x0A000000, 0x0A040000, 20_000).astype(np.uint64)]))  # fmt: skip
    keys = keys[keys < 2**32].astype(np.uint32)
    inside = (keys[:, None] >= first[None, :]) & (keys[:, None] <= last[None, :])
    rows, ranges = np.nonzero(inside)
    assert found(table, keys) == set(zip(rows.tolist(), ranges.tolist(), strict=True))
