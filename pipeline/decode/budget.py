"""Per-exporter budget for variable-length records.

Their records cannot be counted without walking them one by one (compiled, but still the decoder's
costliest records per byte): beyond ``variable_records_per_second`` an exporter's variable-length
data sets are cut short (counted as ``variable_budget``), so one exporter cannot starve the others.
"""

from __future__ import annotations

from pipeline.decode.datagram import DecoderConfig
from pipeline.decode.stats import DecoderStats
from pipeline.decode.streams import put_bounded


class VariableRecordBudget:
    def __init__(self, config: DecoderConfig, stats: DecoderStats) -> None:
        self.config = config
        self.stats = stats
        self.buckets: dict[str, list[float]] = {}
        """exporter -> [records left, as of when]: a token bucket holding at most one second's worth."""

    def left(self, exporter: str, now: float) -> int:
        """Records ``exporter`` may still have walked at ``now`` (refills the bucket first)."""
        rate = self.config.variable_records_per_second
        bucket = self.buckets.get(exporter)
        if bucket is None:
            bucket = [float(rate), now]
            put_bounded(self.buckets, exporter, bucket, self.config.max_streams, self.stats.evictions)
        bucket[0] = min(float(rate), bucket[0] + max(0.0, now - bucket[1]) * rate)
        bucket[1] = max(bucket[1], now)
        return max(0, int(bucket[0]))

    def spend(self, exporter: str, records: int) -> None:
        """Take ``records`` from a bucket :meth:`left` has just read."""
        self.buckets[exporter][0] -= records

    def would_evict(self, exporter: str) -> bool:
        """Whether :meth:`left` would evict another exporter's bucket to make room for this one."""
        return exporter not in self.buckets and len(self.buckets) >= self.config.max_streams
