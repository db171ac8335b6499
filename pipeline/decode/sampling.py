"""Sampling rates and system init times of every (exporter, port, observation domain).

Routers announce both in options records (IEs 34/35, 48-50, 302-306, v9 SAMPLING_INTERVAL; IPFIX
systemInitTimeMilliseconds, IE 160); some put the rate inside each data record (Huawei, IE 34) or
name a sampler whose rate an options record gave. State outlives the packet, so every value is range
checked first: one forged record must not break every later flow of its exporter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.decode import ies
from pipeline.decode.columns import EARLIEST_US, Context, FieldArrays, as_uint
from pipeline.decode.datagram import DecoderConfig
from pipeline.decode.stats import DecoderStats
from pipeline.decode.streams import DomainKey, put_bounded

MAX_SAMPLERS = 256
"""Sampler ids remembered per observation domain."""


class SamplingState:
    def __init__(self, config: DecoderConfig, stats: DecoderStats) -> None:
        self.config = config
        self.stats = stats
        self.rates: dict[DomainKey, dict[int, int]] = {}
        """Per stream: sampler id (0: the stream's own) -> rate."""
        self.sysinit: dict[DomainKey, int] = {}
        """Per stream: systemInitTimeMilliseconds (IPFIX times relative to it need it)."""

    def default_rate(self, dkey: DomainKey) -> int:
        """The rate of records that name no sampler: the stream's own, or its only sampler's."""
        table = self.rates.get(dkey)
        if not table:
            return 1
        if 0 in table:
            return table[0]
        return next(iter(table.values())) if len(table) == 1 else 1

    def apply_to_records(self, fields: FieldArrays, dkey: DomainKey, ctx: Context) -> None:
        """Rates carried by the data records themselves (Huawei IE 34), or their sampler id's rate."""
        for ie in (ies.SAMPLING_INTERVAL, ies.SAMPLER_RANDOM_INTERVAL):
            if ie in fields:
                rate = as_uint(fields[ie])
                ctx.sampling = np.where(rate > 0, np.minimum(rate, 0xFFFFFFFF), ctx.sampling).astype(
                    np.uint32
                )
                return
        for ie in (ies.SAMPLER_ID, ies.SELECTOR_ID):
            if ie in fields:
                table = self.rates.get(dkey, {})
                ids = as_uint(fields[ie])
                for sid in np.unique(ids):
                    if int(sid) in table:
                        ctx.sampling[ids == sid] = table[int(sid)]
                return

    def options_records(self, fields: FieldArrays, n: int, dkey: DomainKey, received: float) -> None:
        """Sampling rates and system init times from ``n`` options records. A record with a value out
        of range is rejected whole (counted by reason) and changes no state."""
        values = {ie: as_uint(v) for ie, v in fields.items()}
        for i in range(n):
            rec = {ie: int(v[i]) for ie, v in values.items()}
            sysinit = rec.get(ies.SYSTEM_INIT_MS)
            rate = rec.get(ies.SAMPLING_INTERVAL) or rec.get(ies.SAMPLER_RANDOM_INTERVAL)
            if not rate and rec.get(ies.SAMPLING_PACKET_INTERVAL):
                interval = rec[ies.SAMPLING_PACKET_INTERVAL]
                rate = round((interval + rec.get(ies.SAMPLING_PACKET_SPACE, 0)) / interval)
            sid = rec.get(ies.SAMPLER_ID, rec.get(ies.SELECTOR_ID, 0))
            reason = self.out_of_range(sysinit, rate, received)
            if reason:
                self.stats.rows_rejected[(dkey[0], reason)] += 1
                continue
            if sysinit is not None:
                self.set_sysinit(dkey, sysinit)
            if rate:
                self.set_rate(dkey, sid, rate)

    def out_of_range(self, sysinit: int | None, rate: int | None, received: float) -> str:
        """Why option values cannot be true ('' if they can): a system init time before 1990 or
        after reception (plus the allowed clock skew), a sampling rate beyond 32 bits."""
        if sysinit is not None and not (
            EARLIEST_US // 1000 <= sysinit <= (received + self.config.max_time_ahead_seconds) * 1000
        ):
            return "options_sysinit_out_of_range"
        if rate is not None and not 0 <= rate <= 0xFFFFFFFF:
            return "options_sampling_out_of_range"
        return ""

    def set_rate(self, dkey: DomainKey, sampler: int, rate: int) -> None:
        table = self.rates.get(dkey)
        if table is None:
            table = {}
            self._put(self.rates, dkey, table)
        if sampler not in table and len(table) >= MAX_SAMPLERS:
            self.stats.rows_rejected[(dkey[0], "sampler_limit")] += 1
            return
        table[sampler] = rate

    def set_sysinit(self, dkey: DomainKey, value: int) -> None:
        self._put(self.sysinit, dkey, value)

    def to_state(self) -> dict[str, list]:
        return {
            "sampling": [[*k, sid, rate] for k, table in self.rates.items() for sid, rate in table.items()],
            "sysinit": [[*k, v] for k, v in self.sysinit.items()],
        }

    def load_state(self, state: dict, now: float) -> int:
        """Restore saved entries, each checked as an options record's would be; returns how many
        were skipped."""
        skipped = 0
        for entry in state.get("sampling", []):
            try:
                exporter, port, domain, sid, rate = entry
                dkey = (str(exporter), int(port), int(domain))
                if self.out_of_range(None, int(rate), now) or int(rate) < 1:
                    raise ValueError(rate)
                self.set_rate(dkey, int(sid), int(rate))
            except (TypeError, ValueError):
                skipped += 1
        for entry in state.get("sysinit", []):
            try:
                exporter, port, domain, value = entry
                if self.out_of_range(int(value), None, now):
                    raise ValueError(value)
                self.set_sysinit((str(exporter), int(port), int(domain)), int(value))
            except (TypeError, ValueError):
                skipped += 1
        return skipped

    def _put(self, state: dict, key: Any, value: Any) -> None:
        put_bounded(state, key, value, self.config.max_streams, self.stats.evictions)
