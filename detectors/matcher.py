"""Match flow batches against an :class:`IndicatorIndex`: one row per (flow, indicator, side) hit.

All of it is array work: address lookups for src and dst, then constraint checks, validity at the
flow's time, de-duplication and allowlist suppression over the (rare) hits only. :meth:`Matcher.find`
answers which indicators each flow hits; :meth:`Matcher.alerts` turns those hits into alert rows
(their cost grows with the hits, not with the traffic); :meth:`Matcher.match` does both.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detectors.addresses import Addresses
from detectors.index import IndicatorIndex
from detectors.kernels import split_hits
from pipeline.schemas import bytes16_to_ip

FLOW_COLUMNS = ("time_received", "exporter", "observation_domain", "flow_start", "flow_end", "src_addr", "dst_addr",
                "src_port", "dst_port", "protocol", "tcp_flags", "packets", "octets", "sampling_rate",
                "src_as", "dst_as", "input_if", "output_if")  # fmt: skip
SIDE_NAMES = np.array(["any", "src", "dst"])
SIDE_ARRAY = pa.array(SIDE_NAMES.tolist(), type=pa.string())


def _within(hi: np.ndarray, lo: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """first <= (hi, lo) <= last for 128-bit values given as (hi, lo) words."""
    ge = (hi > first[:, 0]) | ((hi == first[:, 0]) & (lo >= first[:, 1]))
    le = (hi < last[:, 0]) | ((hi == last[:, 0]) & (lo <= last[:, 1]))
    return ge & le


class Hits(NamedTuple):
    """One entry per (flow, indicator, side) hit: the flow's row in its batch, the indicator's
    position in the index, the side (1 src, 2 dst)."""

    rows: np.ndarray  # int64
    inds: np.ndarray  # int32
    sides: np.ndarray  # int8


class MatchStats:
    def __init__(self) -> None:
        self.flows = 0
        self.hits: Counter[str] = Counter()  # by source
        self.suppressed: Counter[str] = Counter()  # by allowlist name
        self.inactive = 0  # hits on indicators not valid at the flow's time (expired, not yet valid)


class Matcher:
    def __init__(self, index: IndicatorIndex, geoip: Any = None) -> None:
        self.index = index
        self.geoip = geoip
        self.stats = MatchStats()

    def match(self, batch: pa.RecordBatch | pa.Table) -> pa.Table:
        """Alert rows for every hit in ``batch``."""
        batch = one_batch(batch)
        return self.alerts(batch, self.find(batch))

    def find(self, batch: pa.RecordBatch | pa.Table) -> Hits:
        """Every (flow, indicator, side) hit in ``batch``, all checks applied, counted in ``stats``.
        The index may be layered (:class:`detectors.layers.LayeredIndex`): each layer is searched,
        its positions shifted by its offset, and withdrawn positions dropped."""
        batch = one_batch(batch)
        ix = self.index
        self.stats.flows += batch.num_rows
        addrs = {s: Addresses.from_column(batch.column(f"{s}_addr")) for s in ("src", "dst")}
        asns: dict[str, np.ndarray] = {}
        layers = ix.layers()
        if any(len(layer.asn_values) for layer, _ in layers):  # AS-only indicators compare every flow
            asns = {s: _at(batch, f"{s}_as", None) for s in ("src", "dst")}
            if self.geoip is not None:  # flows without AS fields
                asns = {s: self.geoip.fill_asn(addrs[s].keys16(), asns[s]) for s in ("src", "dst")}
        found = [self._find_layer(batch, addrs, asns, layer, offset) for layer, offset in layers]
        found = [f for f in found if len(f[0])]
        if len(found) == 1:
            rows, inds, sides = found[0]
        elif found:
            rows, inds, sides = (np.concatenate([f[k] for f in found]) for k in range(3))
            order = np.argsort(rows, kind="stable")
            rows, inds, sides = rows[order], inds[order], sides[order]
        else:
            rows, inds, sides = np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.int8)
        removed = ix.removed
        if len(removed) and len(inds):
            pos = np.minimum(np.searchsorted(removed, inds), len(removed) - 1)
            keep = np.flatnonzero(removed[pos] != inds)
            rows, inds, sides = rows[keep], inds[keep], sides[keep]
        if len(rows):
            rows, inds, sides = self._allowed(batch, addrs, rows, inds, sides)
        for layer, offset in layers:
            mine = inds[(inds >= offset) & (inds < offset + layer.count)] - offset
            if len(mine):
                per_source = np.bincount(layer.source_code[mine], minlength=len(layer.source_names))
                for code in np.nonzero(per_source)[0]:
                    self.stats.hits[layer.source_names[code]] += int(per_source[code])
        return Hits(rows, inds, sides)

    def _find_layer(self, batch, addrs, asns, ix: IndicatorIndex, offset: int):
        """(rows, inds, sides) of one layer's hits, in flow order, positions shifted by ``offset``."""
        rows_all, ind_all, side_all = [], [], []
        for code, side, other in ((1, "src", "dst"), (2, "dst", "src")):
            rows, payload = ix.table.lookup(addrs[side])
            if len(rows):
                n = len(rows)
                plain_rows, plain_inds = np.empty(n, np.int64), np.empty(n, np.int32)
                c_rows, c_entries = np.empty(n, np.int64), np.empty(n, np.int32)
                n_plain, n_constrained = split_hits(
                    rows, payload, code, plain_rows, plain_inds, c_rows, c_entries
                )
                rows_all.append(plain_rows[:n_plain])
                ind_all.append(plain_inds[:n_plain])
                side_all.append(np.full(n_plain, code, np.int8))
                if n_constrained:
                    c_rows, c_inds = self._constrained(
                        ix,
                        batch,
                        addrs,
                        asns,
                        side,
                        other,
                        code,
                        c_rows[:n_constrained],
                        c_entries[:n_constrained],
                    )
                    rows_all.append(c_rows)
                    ind_all.append(c_inds)
                    side_all.append(np.full(len(c_rows), code, np.int8))
            if len(ix.asn_values):
                values = asns[side]
                lo_pos = np.searchsorted(ix.asn_values, values, side="left")
                hi_pos = np.searchsorted(ix.asn_values, values, side="right")
                counts = hi_pos - lo_pos
                hit_rows = np.nonzero(counts)[0]
                if len(hit_rows):
                    c = counts[hit_rows]
                    rep = np.repeat(hit_rows, c)
                    pos = np.repeat(lo_pos[hit_rows] - (np.cumsum(c) - c), c) + np.arange(int(c.sum()))
                    ok = (ix.asn_side[pos] == 0) | (ix.asn_side[pos] == code)
                    rows_all.append(rep[ok])
                    ind_all.append(ix.asn_ind[pos[ok]])
                    side_all.append(np.full(int(ok.sum()), code, np.int8))
        rows = np.concatenate(rows_all) if rows_all else np.empty(0, np.int64)
        inds = np.concatenate(ind_all) if ind_all else np.empty(0, np.int32)
        sides = np.concatenate(side_all) if side_all else np.empty(0, np.int8)
        if len(rows):
            rows, inds, sides = self._active(ix, batch, rows, inds, sides)
        if len(rows):
            order = np.argsort(rows, kind="stable")  # flow order; a merge of a few sorted runs: cheap
            rows, inds, sides = rows[order], inds[order], sides[order]
            rows, inds, sides = self._unique(ix, rows, inds, sides)
        if offset:
            inds = inds + np.int32(offset)
        return rows, inds, sides

    def candidate_columns(self) -> list[str]:
        """The flow columns :meth:`candidates` reads."""
        has_asn = any(len(layer.asn_values) for layer, _ in self.index.layers())
        return ["src_addr", "dst_addr"] + (["src_as", "dst_as"] if has_asn else [])

    def find_columns(self) -> list[str]:
        """The flow columns :meth:`find` reads with this index: :meth:`candidate_columns`, and the
        ports, protocol and AS of constrained entries, the times of indicators with a validity window,
        the ports of allowlist entries, where the index has any."""
        layers = [layer for layer, _ in self.index.layers()]
        extra = []
        if any(len(layer.entry_ind) for layer in layers):
            extra += ["src_port", "dst_port", "protocol", "src_as", "dst_as"]
        if any(len(layer.valid_ind) for layer in layers):
            extra += ["flow_end", "time_received"]
        if len(self.index.allow_port):
            extra += ["src_port", "dst_port"]
        columns = self.candidate_columns()
        return columns + [name for name in dict.fromkeys(extra) if name not in columns]

    def candidates(self, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
        """Sorted rows of ``batch`` that some index entry covers by address (or by AS, for AS
        indicators), in any layer: a superset of the rows :meth:`find` reports, from
        :meth:`candidate_columns` only, so that a scan of an archive reads the other columns for
        these rows alone. Not counted."""
        batch = one_batch(batch)
        found = []
        for side in ("src", "dst"):
            addrs = Addresses.from_column(batch.column(f"{side}_addr"))
            asns = None
            for layer, _ in self.index.layers():
                found.append(layer.table.lookup(addrs)[0])
                if len(layer.asn_values):
                    if asns is None:
                        asns = _at(batch, f"{side}_as", None)
                        if self.geoip is not None:
                            asns = self.geoip.fill_asn(addrs.keys16(), asns)
                    found.append(np.flatnonzero(np.isin(asns, layer.asn_values)))
        return np.unique(np.concatenate(found))

    def _unique(self, ix: IndicatorIndex, rows, inds, sides):
        """One hit per (flow, indicator, side). Only indicators indexed under several entries (OR of
        conditions, several ports, overlapping networks) can hit twice; the others pass untouched."""
        repeated = ix.repeated_inds
        if not len(repeated):
            return rows, inds, sides
        pos = np.minimum(np.searchsorted(repeated, inds), len(repeated) - 1)
        maybe = np.flatnonzero(repeated[pos] == inds)
        if not len(maybe):
            return rows, inds, sides
        key = (rows[maybe].astype(np.int64) * ix.count + inds[maybe]) * 3 + sides[maybe]
        _, first = np.unique(key, return_index=True)
        keep = np.ones(len(rows), dtype=bool)
        keep[maybe] = False
        keep[maybe[first]] = True
        keep = np.flatnonzero(keep)
        return rows[keep], inds[keep], sides[keep]

    def _constrained(self, ix: IndicatorIndex, batch, addrs, asns, side, other, code, rows, entries):
        """Hits on constrained entries whose ports, protocol, AS and other-side address agree."""
        ok = (ix.entry_side[entries] == 0) | (ix.entry_side[entries] == code)
        es, ed, ep = ix.entry_sport[entries], ix.entry_dport[entries], ix.entry_proto[entries]
        ok &= (es == -1) | (es == _at(batch, "src_port", rows))
        ok &= (ed == -1) | (ed == _at(batch, "dst_port", rows))
        ok &= (ep == -1) | (ep == _at(batch, "protocol", rows))
        ea = ix.entry_asn[entries]
        asn = asns[side][rows] if asns else _at(batch, f"{side}_as", rows)
        ok &= (ea == -1) | (ea == asn)
        has_other = ix.entry_has_other[entries]
        if has_other.any():
            ohi, olo = addrs[other].hilo(rows)
            inside = _within(ohi, olo, ix.other_first[entries], ix.other_last[entries])
            ok &= ~has_other | inside
        return rows[ok], ix.entry_ind[entries[ok]]

    def _active(self, ix: IndicatorIndex, batch: pa.RecordBatch, rows, inds, sides):
        """Only indicators valid at the flow's time (its end, else its receipt) fire."""
        if not len(ix.valid_ind):  # no indicator has a validity window
            return rows, inds, sides
        take = pa.array(rows, type=pa.int64())  # hit rows only: the time columns are read for few rows
        end, received = batch.column("flow_end").take(take), batch.column("time_received").take(take)
        when = pc.if_else(pc.is_null(end), received, end)
        t = when.cast(pa.int64()).to_numpy(zero_copy_only=False)
        valid_from, valid_until = ix.validity(inds)
        ok = (valid_from <= t) & (t < valid_until)
        self.stats.inactive += int((~ok).sum())
        return rows[ok], inds[ok], sides[ok]

    def _allowed(self, batch, addrs, rows, inds, sides):
        ix = self.index
        if not len(ix.allow_port):
            return rows, inds, sides
        matched = Addresses(np.where((sides == 1)[:, None], addrs["src"].raw[rows], addrs["dst"].raw[rows]))
        hit_idx, entries = ix.allow.lookup(matched)
        port = np.where(sides == 1, _at(batch, "src_port", rows), _at(batch, "dst_port", rows))
        allowed_port = ix.allow_port[entries]
        ok = (allowed_port == -1) | (allowed_port == port[hit_idx])
        suppressed = np.zeros(len(rows), dtype=bool)
        suppressed[hit_idx[ok]] = True
        for e in entries[ok]:
            self.stats.suppressed[ix.allow_name[e]] += 1
        keep = ~suppressed
        return rows[keep], inds[keep], sides[keep]

    def alerts(self, batch: pa.RecordBatch, hits: Hits) -> pa.Table:
        """Alert rows: the flow's columns, the side, the indicator's attributes (column-wise takes)."""
        ix = self.index
        rows, inds, sides = hits
        take_rows = pa.array(rows, type=pa.int64())
        fields = [batch.schema.field(name) for name in FLOW_COLUMNS]
        columns = [batch.column(name).take(take_rows) for name in FLOW_COLUMNS]
        fields.append(pa.field("side", pa.string()))
        columns.append(SIDE_ARRAY.take(pa.array(sides, type=pa.int8())))
        attributes = ix.attributes.take(inds)  # read part by part, at the hits only
        for name in attributes.column_names:
            fields.append(attributes.schema.field(name))
            columns.append(attributes.column(name))
        flows = pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=batch.schema.metadata))
        if self.geoip is not None:
            flows = self.geoip.enrich(flows)
        return flows


def _at(batch: pa.RecordBatch, name: str, rows: np.ndarray | None) -> np.ndarray:
    """An integer column as int64 at ``rows`` (None: all), nulls as -1 (equal to no real value)."""
    column = batch.column(name)
    if rows is not None:
        column = column.take(pa.array(rows, type=pa.int64()))
    return column.cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)


def one_batch(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    """A table's rows as one record batch (the matcher's unit of work)."""
    if isinstance(batch, pa.RecordBatch):
        return batch
    if not batch.num_rows:
        return pa.RecordBatch.from_pylist([], schema=batch.schema)
    return batch.combine_chunks().to_batches()[0]


class MatcherHandle:
    """The matcher in use, swapped whole when intel changes; batches in flight keep the old one."""

    def __init__(self, matcher: Matcher) -> None:
        self._matcher = matcher
        self._lock = threading.Lock()

    @property
    def matcher(self) -> Matcher:
        return self._matcher

    def swap(self, index: IndicatorIndex) -> None:
        with self._lock:
            old = self._matcher
            new = Matcher(index, old.geoip)
            new.stats = old.stats
            self._matcher = new  # one reference assignment: atomic for readers

    def match(self, batch: pa.RecordBatch) -> pa.Table:
        return self._matcher.match(batch)


def alerts_to_dicts(table: pa.Table) -> list[dict[str, Any]]:
    """Alert rows as JSON-ready dicts (addresses as text, times as ISO 8601)."""
    out = []
    for row in table.to_pylist():
        for key in ("src_addr", "dst_addr", "exporter"):
            row[key] = str(bytes16_to_ip(row[key]))
        for key, value in row.items():
            if isinstance(value, datetime):
                row[key] = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        out.append(row)
    return out
