"""Match flow batches against an :class:`IndicatorIndex`: one row per (flow, indicator, side) hit.

All of it is array work: address lookups for src and dst, then constraint checks, validity at the
flow's time, de-duplication and allowlist suppression over the (rare) hits only.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detectors.addresses import Addresses
from detectors.index import IndicatorIndex
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
        if isinstance(batch, pa.Table):
            batch = (
                batch.combine_chunks().to_batches()[0]
                if batch.num_rows
                else pa.RecordBatch.from_pylist([], schema=batch.schema)
            )
        ix = self.index
        self.stats.flows += batch.num_rows
        addrs = {s: Addresses.from_column(batch.column(f"{s}_addr")) for s in ("src", "dst")}
        # Native column types (zero-copy where there are no nulls): only hit rows are ever compared.
        sport = batch.column("src_port").to_numpy(zero_copy_only=False)
        dport = batch.column("dst_port").to_numpy(zero_copy_only=False)
        proto = batch.column("protocol").to_numpy(zero_copy_only=False)
        asns = {s: batch.column(f"{s}_as").to_numpy(zero_copy_only=False) for s in ("src", "dst")}
        if self.geoip is not None and len(ix.asn_values):  # AS indicators, flows without AS fields
            asns = {
                s: self.geoip.fill_asn(addrs[s].keys16(), asns[s].astype(np.int64)) for s in ("src", "dst")
            }
        rows_all, ind_all, side_all = [], [], []
        for code, side, other in ((1, "src", "dst"), (2, "dst", "src")):
            rows, payload = ix.table.lookup(addrs[side])
            if len(rows):
                p_side = payload % 3  # plain: indicator * 3 + side; constrained: negative
                ok = np.flatnonzero((payload >= 0) & ((p_side == 0) | (p_side == code)))
                rows_all.append(np.take(rows, ok))
                ind_all.append((np.take(payload, ok) // 3).astype(np.int32))
                side_all.append(np.full(len(ok), code, np.int8))
                constrained = np.flatnonzero(payload < 0)
                if len(constrained):
                    c_rows, c_inds = self._constrained(
                        addrs, side, other, code, np.take(rows, constrained), ~np.take(payload, constrained),
                        (sport, dport, proto, asns[side]),
                    )  # fmt: skip
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
            rows, inds, sides = self._active(batch, rows, inds, sides)
        if len(rows):
            key = (rows.astype(np.int64) * len(ix.indicators) + inds) * 3 + sides
            _, first = np.unique(key, return_index=True)
            rows, inds, sides = rows[first], inds[first], sides[first]
            rows, inds, sides = self._allowed(addrs, sport, dport, rows, inds, sides)
        if len(inds):
            per_source = np.bincount(ix.source_code[inds], minlength=len(ix.source_names))
            for code in np.nonzero(per_source)[0]:
                self.stats.hits[ix.source_names[code]] += int(per_source[code])
        return self._table(batch, rows, inds, sides)

    def _constrained(self, addrs, side, other, code, rows, entries, fields):
        """Hits on constrained entries whose ports, protocol, AS and other-side address agree."""
        ix = self.index
        sport, dport, proto, asn = fields
        ok = (ix.entry_side[entries] == 0) | (ix.entry_side[entries] == code)
        es, ed, ep = ix.entry_sport[entries], ix.entry_dport[entries], ix.entry_proto[entries]
        ok &= (es == -1) | (es == sport[rows])
        ok &= (ed == -1) | (ed == dport[rows])
        ok &= (ep == -1) | (ep == proto[rows])
        ea = ix.entry_asn[entries]
        ok &= (ea == -1) | (ea == asn[rows])
        has_other = ix.entry_has_other[entries]
        if has_other.any():
            ohi, olo = addrs[other].hilo(rows)
            inside = _within(ohi, olo, ix.other_first[entries], ix.other_last[entries])
            ok &= ~has_other | inside
        return rows[ok], ix.entry_ind[entries[ok]]

    def _active(self, batch: pa.RecordBatch, rows, inds, sides):
        """Only indicators valid at the flow's time (its end, else its receipt) fire."""
        ix = self.index
        take = pa.array(rows, type=pa.int64())  # hit rows only: the time columns are read for few rows
        end, received = batch.column("flow_end").take(take), batch.column("time_received").take(take)
        when = pc.if_else(pc.is_null(end), received, end)
        t = when.cast(pa.int64()).to_numpy(zero_copy_only=False)
        valid_from, valid_until = ix.validity(inds)
        ok = (valid_from <= t) & (t < valid_until)
        self.stats.inactive += int((~ok).sum())
        return rows[ok], inds[ok], sides[ok]

    def _allowed(self, addrs, sport, dport, rows, inds, sides):
        ix = self.index
        if not len(ix.allow_port):
            return rows, inds, sides
        matched = Addresses(np.where((sides == 1)[:, None], addrs["src"].raw[rows], addrs["dst"].raw[rows]))
        hit_idx, entries = ix.allow.lookup(matched)
        port = np.where(sides == 1, sport[rows], dport[rows])
        allowed_port = ix.allow_port[entries]
        ok = (allowed_port == -1) | (allowed_port == port[hit_idx])
        suppressed = np.zeros(len(rows), dtype=bool)
        suppressed[hit_idx[ok]] = True
        for e in entries[ok]:
            self.stats.suppressed[ix.allow_name[e]] += 1
        keep = ~suppressed
        return rows[keep], inds[keep], sides[keep]

    def _table(self, batch: pa.RecordBatch, rows, inds, sides) -> pa.Table:
        """Alert rows: the flow's columns, the side, the indicator's attributes (column-wise takes)."""
        ix = self.index
        take_rows, take_inds = pa.array(rows, type=pa.int64()), pa.array(inds, type=pa.int32())
        fields = [batch.schema.field(name) for name in FLOW_COLUMNS]
        columns = [batch.column(name).take(take_rows) for name in FLOW_COLUMNS]
        fields.append(pa.field("side", pa.string()))
        columns.append(SIDE_ARRAY.take(pa.array(sides, type=pa.int8())))
        for name in ix.attributes.column_names:
            column = ix.attributes.column(name).take(take_inds)
            if pa.types.is_dictionary(column.type):  # stored encoded (see IndicatorIndex.build)
                column = column.cast(column.type.value_type)
            fields.append(pa.field(name, column.type))
            columns.append(column)
        flows = pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=batch.schema.metadata))
        if self.geoip is not None:
            flows = self.geoip.enrich(flows)
        return flows


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
