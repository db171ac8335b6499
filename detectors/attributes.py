"""What an alert row says about the indicator it hit, read by index position at hit positions only.

An index keeps no table of its own for this: it reads the parts it was built from (a small table of
its object indicators, then the Arrow parts of its rows, :mod:`pipeline.intel.table`), so millions of
values and ids are never copied, a column a part leaves out (null, or a constant such as a list's
source) is made only for the hits, and a list's ids (file name + value) only when an alert needs one.
Arrow's own ``take`` on a many-chunk column would first join the chunks (a copy of the whole column
per call), hence the grouping by part here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

from pipeline.intel.table import TIME, part_column, part_id_hashes

FIELDS = (("indicator_id", "id"), ("indicator", "value"), ("indicator_name", "name"), ("source", "source"),
          ("confidence", "confidence"), ("tlp", "tlp"), ("valid_until", "valid_until"))  # fmt: skip
"""(alert column, the indicator table's column it comes from)."""
SCHEMA = pa.schema([
    pa.field("indicator_id", pa.string()), pa.field("indicator", pa.string()),
    pa.field("indicator_name", pa.string()), pa.field("source", pa.string()),
    pa.field("confidence", pa.int32()), pa.field("tlp", pa.string()), pa.field("valid_until", TIME),
])  # fmt: skip


class Attributes:
    """Alert attributes of positions 0..n-1, over ``parts`` (Arrow tables in the indicator table's
    column names, see :mod:`pipeline.intel.table`), position order = part order."""

    def __init__(self, parts: Sequence[pa.Table]) -> None:
        self.parts = [p for p in parts if p.num_rows]
        self.starts = np.cumsum([0] + [p.num_rows for p in self.parts], dtype=np.int64)

    @classmethod
    def concat(cls, many: Iterable[Attributes]) -> Attributes:
        return cls([p for a in many for p in a.parts])

    @property
    def num_rows(self) -> int:
        return int(self.starts[-1])

    def __len__(self) -> int:
        return self.num_rows

    @property
    def column_names(self) -> list[str]:
        return SCHEMA.names

    @property
    def nbytes(self) -> int:
        """Bytes of the parts' attribute columns (shared with the indicator table they came from)."""
        names = {source for _, source in FIELDS}
        return sum(p.column(c).nbytes for p in self.parts for c in p.column_names if c in names)

    def take(self, positions: np.ndarray | pa.Array | Sequence[int]) -> pa.Table:
        """The attributes of ``positions``, in that order (schema :data:`SCHEMA`)."""
        if isinstance(positions, pa.Array | pa.ChunkedArray):
            positions = positions.to_numpy(zero_copy_only=False)
        pos = np.asarray(positions, dtype=np.int64)
        if not len(pos):
            return SCHEMA.empty_table()
        which = np.searchsorted(self.starts, pos, side="right") - 1
        if len(pos) > 1 and (which[1:] < which[:-1]).any():
            order = np.argsort(which, kind="stable")
            table = self._take_sorted(pos[order], which[order])
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
            return table.take(pa.array(inverse))
        return self._take_sorted(pos, which)

    def _take_sorted(self, pos: np.ndarray, which: np.ndarray) -> pa.Table:
        cuts = np.flatnonzero(which[1:] != which[:-1]) + 1
        pieces = []
        for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(pos)].tolist(), strict=True):
            p = int(which[a])
            local = pa.array(pos[a:b] - self.starts[p], type=pa.int64())
            part = self.parts[p]
            pieces.append(pa.table([part_column(part, source, local) for _, source in FIELDS], schema=SCHEMA))
        return pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)

    def column(self, name: str) -> pa.ChunkedArray:
        """One attribute of every position, made whole (small indexes, tests)."""
        source = dict(FIELDS)[name]
        return pa.chunked_array([part_column(p, source) for p in self.parts], type=SCHEMA.field(name).type)

    def id_hashes(self) -> np.ndarray:
        """A 64-bit hash of each position's id (:func:`pipeline.intel.table.part_id_hashes`)."""
        out = np.empty(self.num_rows, np.uint64)
        for p, part in enumerate(self.parts):
            part_id_hashes(part, out[self.starts[p] : self.starts[p + 1]])
        return out
