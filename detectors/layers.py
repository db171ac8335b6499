"""A large index and the changes since it was built, answered together: an update costs a small
build, not a rebuild of millions of indicators.

:class:`LayeredIndex` is the main :class:`~detectors.index.IndicatorIndex`, a *delta* index of the
indicators added since (rebuilt whole on every update: it stays small), and the positions withdrawn
from the main one. The matcher searches both layers and drops withdrawn positions from the (rare)
hits, so lookups stay as fast as the main index's (one more small table read per address). A
background rebuild of the main index folds the delta in (see
:class:`pipeline.runtime.intel_follower.IntelFollower`); the layered index is immutable, so a
swap is one reference assignment, as for a plain index.
"""

from __future__ import annotations

from collections.abc import Iterable

import numba
import numpy as np
import pyarrow as pa

from detectors.index import IndicatorIndex
from pipeline.intel.allowlists import Allowlist
from pipeline.intel.model import Indicator
from pipeline.intel.table import IndicatorTable


@numba.njit(cache=True, nogil=True)
def _fnv1a(data, offsets, out):  # pragma: no cover - compiled
    """64-bit FNV-1a of each string (Arrow offsets/data)."""
    for r in range(len(offsets) - 1):
        h = np.uint64(0xCBF29CE484222325)
        for j in range(offsets[r], offsets[r + 1]):
            h = (h ^ np.uint64(data[j])) * np.uint64(0x100000001B3)
        out[r] = h


def string_hashes(strings: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """uint64 hash of each (non-null) string, computed from the Arrow buffers."""
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    strings = strings.cast(pa.large_string())
    n = len(strings)
    offsets = np.frombuffer(strings.buffers()[1], np.int64, n + 1 + strings.offset)[strings.offset :]
    data = strings.buffers()[2]
    out = np.empty(n, np.uint64)
    _fnv1a(np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8), offsets, out)
    return out


class IdLookup:
    """Positions of indicator ids in an index: sorted 64-bit hashes, each match confirmed on the
    string itself (a 10M-entry dict of Python strings would cost more than the index)."""

    def __init__(self, ids: pa.ChunkedArray | pa.Array) -> None:
        self.ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        hashes = string_hashes(self.ids)
        self.order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[self.order]

    def positions(self, wanted: list[str]) -> np.ndarray:
        """Positions (ascending) of every entry whose id is in ``wanted``."""
        if not wanted or not len(self.hashes):
            return np.empty(0, np.int64)
        keys = string_hashes(pa.array(wanted, type=pa.string()))
        lo = np.searchsorted(self.hashes, keys, side="left")
        hi = np.searchsorted(self.hashes, keys, side="right")
        counts = hi - lo
        candidates = self.order[
            np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
        ]
        names = np.repeat(np.arange(len(wanted)), counts)
        found = self.ids.take(pa.array(candidates, type=pa.int64())).to_pylist()
        same = np.array([found[k] == wanted[names[k]] for k in range(len(found))], dtype=bool)
        return np.sort(candidates[same]) if len(candidates) else np.empty(0, np.int64)


class LayeredIndex:
    """Main index, delta index, withdrawn positions; built by :meth:`of` and :meth:`updated`."""

    def __init__(
        self,
        main: IndicatorIndex,
        main_removed: np.ndarray,
        delta_objects: list[Indicator],
        delta_table: IndicatorTable,
        allowlist: Allowlist | None,
        ids: IdLookup | None = None,
    ) -> None:
        self.main = main
        self.allowlist = allowlist
        self.delta_objects, self.delta_table = delta_objects, delta_table
        self.delta = IndicatorIndex.build(delta_objects, allowlist, delta_table)
        self.removed = np.unique(main_removed).astype(np.int32)
        self.count = main.count - len(self.removed) + self.delta.count
        """Indicators in use (withdrawn ones not counted)."""
        self._ids = ids
        self.allow, self.allow_port, self.allow_name = main.allow, main.allow_port, main.allow_name
        self.attributes = _aligned(main.attributes, self.delta.attributes)

    @classmethod
    def of(
        cls, main: IndicatorIndex, allowlist: Allowlist | None = None, ids: IdLookup | None = None
    ) -> LayeredIndex:
        return cls(main, np.empty(0, np.int32), [], IndicatorTable.empty(), allowlist, ids)

    def ids(self) -> IdLookup:
        """The main index's id lookup, made on first use (~1 s at 10M; the follower makes it in the
        background right after a main build, so that updates do not wait for it)."""
        if self._ids is None:
            self._ids = IdLookup(self.main.attributes.column("indicator_id"))
        return self._ids

    def updated(
        self, withdrawn: Iterable[str], objects: list[Indicator] = (), table: IndicatorTable | None = None
    ) -> LayeredIndex:
        """A new layered index: the indicators with ``withdrawn`` ids gone (from either layer), then
        ``objects`` and ``table`` added (a changed indicator: its id withdrawn, its new form added).
        Costs a build of the delta, not of the main index."""
        gone = list(dict.fromkeys(withdrawn))
        removed = np.concatenate([self.removed, self.ids().positions(gone)])
        gone_set = set(gone)
        delta_objects = [i for i in self.delta_objects if i.id not in gone_set] + list(objects)
        delta_table = self.delta_table
        if len(delta_table) and gone:
            keep = ~np.isin(np.asarray(delta_table.column("id").to_pylist(), dtype=object), gone)
            delta_table = delta_table.take(np.flatnonzero(keep))
        if table is not None and len(table):
            delta_table = IndicatorTable.concat([delta_table, table])
        return LayeredIndex(self.main, removed, delta_objects, delta_table, self.allowlist, self._ids)

    @property
    def pending(self) -> int:
        """Changes not yet folded into the main index (delta entries and withdrawn positions)."""
        return self.delta.count + len(self.removed)

    def layers(self) -> list[tuple[IndicatorIndex, int]]:
        return [(self.main, 0), (self.delta, self.main.count)] if self.delta.count else [(self.main, 0)]

    def source_counts(self) -> dict[str, int]:
        counts = dict(self.main.source_counts())
        for source, n in self.delta.source_counts().items():
            counts[source] = counts.get(source, 0) + n
        if len(self.removed):
            gone = np.bincount(self.main.source_code[self.removed], minlength=len(self.main.source_names))
            for code in np.flatnonzero(gone):
                counts[self.main.source_names[code]] -= int(gone[code])
        return {k: v for k, v in counts.items() if v}

    def nbytes(self, fixed: bool = True) -> int:
        return self.main.nbytes(fixed) + self.delta.nbytes(fixed) + self.removed.nbytes


def _aligned(main: pa.Table, delta: pa.Table) -> pa.Table:
    """The delta's attribute rows after the main's, in the main's column types (either may hold a
    column dictionary-encoded)."""
    if not delta.num_rows:
        return main
    columns = []
    for name in main.column_names:
        want, column = main.schema.field(name).type, delta.column(name)
        if column.type != want:
            plain = column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column
            column = plain.dictionary_encode() if pa.types.is_dictionary(want) else plain
            column = column.cast(want) if column.type != want else column
        columns.append(column)
    return pa.concat_tables([main, pa.table(columns, schema=main.schema)])
