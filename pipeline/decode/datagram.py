"""What the decoder takes in, and how it is tuned."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class Datagram(NamedTuple):
    """One received UDP payload. ``received`` is unix epoch seconds (collector clock)."""

    payload: bytes
    exporter: str
    port: int
    received: float


@dataclass(frozen=True)
class DecoderConfig:
    """Limits and keys. Defaults suit a backbone: templates are kept long (routers resend them only
    every few minutes, and dropping them early loses data), limits stop one exporter from exhausting
    memory."""

    template_key_includes_port: bool = True
    """RFC 7011 §8.4 keys templates by (address, port, domain). Juniper MX changes source port between
    template and data packets: set False there."""
    template_ttl_seconds: float = 86_400.0
    """Templates not refreshed for this long are forgotten (IPFIX withdrawal removes them at once)."""
    max_templates_per_exporter: int = 2_048
    """Templates per export stream (address, source port unless ``template_key_includes_port`` is
    off, observation domain): one stream's flood never refuses another stream's templates."""
    max_templates: int = 16_384
    """Templates in all: beyond it the least recently used are evicted (counted), so spoofed sources
    cost bounded memory and a bounded state file."""
    max_fields_per_template: int = 512
    pending_max_sets_per_exporter: int = 1_024
    pending_max_bytes_per_exporter: int = 4 * 1024 * 1024
    pending_max_bytes: int = 16 * 1024 * 1024
    """Bytes of data sets waiting for their template, all exporters together (beyond: refused,
    counted)."""
    pending_max_sets: int = 16_384
    """Data sets waiting for their template, all exporters together (each costs ~1 KB beyond its
    bytes)."""
    pending_ttl_seconds: float = 600.0
    """Data sets that arrive before their template are kept this long at most."""
    max_streams: int = 65_536
    """Per-stream state (sequence numbers, sampling rates, system init times): beyond it the oldest
    stream's is evicted (counted)."""
    max_stat_exporters: int = 4_096
    """Distinct exporters the decoder's counters keep apart; later ones are counted as ``other``."""
    variable_records_per_second: int = 500_000
    """Budget of each exporter for variable-length records (the one per-record walk): beyond it in a
    second, its variable-length data sets are rejected (counted) so it cannot starve the others."""
    max_time_ahead_seconds: float = 7 * 86_400.0
    """Flow times (and systemInitTime) later than reception by more than this are out of range."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> DecoderConfig:
        """Raise ``ValueError`` naming the first setting that cannot work."""
        checks = [
            (self.template_ttl_seconds > 0, "template_ttl_seconds must be > 0"),
            (
                1 <= self.max_templates_per_exporter <= 65_280,
                "max_templates_per_exporter must be in 1..65280",
            ),
            (1 <= self.max_templates <= 10_000_000, "max_templates must be in 1..10000000"),
            (1 <= self.max_fields_per_template <= 65_535, "max_fields_per_template must be in 1..65535"),
            (self.pending_max_sets_per_exporter >= 0, "pending_max_sets_per_exporter must be >= 0"),
            (self.pending_max_bytes_per_exporter >= 0, "pending_max_bytes_per_exporter must be >= 0"),
            (0 <= self.pending_max_bytes <= 1 << 40, "pending_max_bytes must be in 0..2^40"),
            (0 <= self.pending_max_sets <= 10_000_000, "pending_max_sets must be in 0..10000000"),
            (self.pending_ttl_seconds >= 0, "pending_ttl_seconds must be >= 0"),
            (1 <= self.max_streams <= 10_000_000, "max_streams must be in 1..10000000"),
            (1 <= self.max_stat_exporters <= 1_000_000, "max_stat_exporters must be in 1..1000000"),
            (
                0 <= self.variable_records_per_second <= 1 << 40,
                "variable_records_per_second must be in 0..2^40",
            ),
            (
                0 <= self.max_time_ahead_seconds <= 10 * 366 * 86_400,
                "max_time_ahead_seconds must be in 0..10 years",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self
