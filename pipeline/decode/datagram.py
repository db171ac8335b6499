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
    max_fields_per_template: int = 512
    pending_max_sets_per_exporter: int = 1_024
    pending_max_bytes_per_exporter: int = 4 * 1024 * 1024
    pending_ttl_seconds: float = 600.0
    """Data sets that arrive before their template are kept this long at most."""
