"""Typed collector configuration: defaults < TOML file < ``SHOAL_COLLECT__SECTION__KEY`` env < CLI.

One frozen tree validated once at start-up, so a typo in a file or a variable fails loudly before any
socket is opened instead of silently running with a default.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, load_tree
from pipeline.decode.datagram import DecoderConfig

ENV_PREFIX = "SHOAL_COLLECT__"


@dataclass(frozen=True)
class Endpoint:
    """A listening address: ``HOST:PORT``, IPv6 hosts in brackets (``[::1]:4739``)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        host, sep, port = text.strip().rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"listen address {text!r} is not HOST:PORT")
        host = host.strip("[]") or "0.0.0.0"
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"listen address {text!r}: host must be an IP address") from None
        if not 0 <= int(port) <= 65535:
            raise ConfigError(f"listen address {text!r}: port out of range")
        return cls(host, int(port))

    @property
    def family_v6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family_v6 else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ReceiveConfig:
    listen: tuple[str, ...] = ()
    rcvbuf_bytes: int = 32 * 1024 * 1024
    """SO_RCVBUF asked for each socket (the kernel caps it at net.core.rmem_max unless root)."""
    recv_batch: int = 256
    """Datagrams fetched per recvmmsg call."""
    max_datagram: int = 65535
    """Receive buffer per datagram; larger datagrams are truncated and counted, never decoded."""
    allow_exporters: tuple[str, ...] = ()
    """Exporter CIDRs accepted; empty accepts everyone. Others are dropped and counted."""


@dataclass(frozen=True)
class BatchConfig:
    max_rows: int = 65536
    max_seconds: float = 1.0


@dataclass(frozen=True)
class ParquetConfig:
    dir: str = ""
    roll_seconds: float = 300.0
    roll_bytes: int = 256 * 1024 * 1024
    compression: str = "lz4"
    """Parquet codec; lz4 (Parquet's LZ4_RAW) is the cheapest per flow that still writes a fraction
    of nfcapd's bytes (benchmarks/README.md, Collector); zstd writes ~27% fewer bytes for 12-20% more
    collector CPU."""
    compression_level: int = 1
    """For zstd, gzip and brotli only."""


@dataclass(frozen=True)
class BufferConfig:
    """Bounded memory for batches a failing sink could not take."""

    max_rows: int = 2_000_000
    max_bytes: int = 512 * 1024 * 1024
    retry_seconds: float = 1.0


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""
    max_exporters: int = 64
    """Distinct exporter label values per metric; the rest are folded into ``other``."""
    max_label_values: int = 256
    """Distinct values of any other label (observation domain, reason...) per metric; the rest are
    folded into ``other``."""


@dataclass(frozen=True)
class CollectorConfig:
    receive: ReceiveConfig = field(default_factory=ReceiveConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    parquet: ParquetConfig = field(default_factory=ParquetConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    """The decoder's limits and keys (template TTL, caps...), checked by ``DecoderConfig`` itself."""
    kafka: Mapping[str, Any] = field(default_factory=dict)
    """librdkafka settings of the Kafka sink (``security.protocol``, ``ssl.ca.location``...);
    ``SHOAL_KAFKA_<KEY>`` environment variables override them (secrets)."""
    state_file: str = ""
    """Where templates and sampling state persist across restarts; default ``<parquet dir>/.shoal/``."""
    workers: int | str = 1
    """Collector processes sharing the listening ports (SO_REUSEPORT), each exporter hashed to one
    of them; ``"auto"``: one per core this process may use. At most that many."""

    def validate(self) -> CollectorConfig:
        r, b, p, buf, m = self.receive, self.batch, self.parquet, self.buffer, self.metrics
        if not r.listen:
            raise ConfigError("receive.listen: at least one HOST:PORT is needed")
        for text in r.listen:
            Endpoint.parse(text)
        for cidr in r.allow_exporters:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"receive.allow_exporters: {cidr!r} is not a CIDR") from None
        checks = [
            (4096 <= r.rcvbuf_bytes <= 2**31 - 1, "receive.rcvbuf_bytes must be in 4096..2^31-1"),
            (1 <= r.recv_batch <= 4096, "receive.recv_batch must be in 1..4096"),
            (512 <= r.max_datagram <= 65535, "receive.max_datagram must be in 512..65535"),
            (1 <= b.max_rows <= 4_194_304, "batch.max_rows must be in 1..4194304 (rows are preallocated)"),
            (0 < b.max_seconds <= 3600, "batch.max_seconds must be in (0, 3600]"),
            (p.roll_seconds > 0, "parquet.roll_seconds must be > 0"),
            (p.roll_bytes >= 1024, "parquet.roll_bytes must be >= 1024"),
            (-7 <= p.compression_level <= 22, "parquet.compression_level must be in -7..22"),
            (p.compression in {"zstd", "snappy", "gzip", "lz4", "none"}, "parquet.compression unknown"),
            (buf.max_rows >= 0 and buf.max_bytes >= 0, "buffer limits must be >= 0"),
            (buf.retry_seconds > 0, "buffer.retry_seconds must be > 0"),
            (1 <= m.max_exporters <= 100_000, "metrics.max_exporters must be in 1..100000"),
            (1 <= m.max_label_values <= 100_000, "metrics.max_label_values must be in 1..100000"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if m.listen:
            Endpoint.parse(m.listen)
        self._workers_wanted()
        return self

    def worker_count(self, cores: int | None = None) -> int:
        """``workers`` as a number (``auto``: ``cores``, by default :func:`usable_cores`);
        :class:`ConfigError` unless it is in 1..cores. (:meth:`validate` checks the form only, so
        that a file loads the same on any machine; the command checks against the cores.)"""
        cores = usable_cores() if cores is None else cores
        wanted = self._workers_wanted()
        if wanted is None:
            return cores
        if wanted > cores:
            raise ConfigError(
                f"workers: {wanted} is more than the {cores} core(s) this process may use "
                f"(1..{cores}, or 'auto'); more workers than cores only compete for them"
            )
        return wanted

    def _workers_wanted(self) -> int | None:
        """The number of workers asked for, None for ``auto``."""
        value = self.workers
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "auto":
                return None
            if not text.lstrip("-").isdigit():
                raise ConfigError(f"workers: {value!r} is not a number of workers or 'auto'")
            value = int(text)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"workers: {value!r} is not a number of workers or 'auto'")
        if value < 1:
            raise ConfigError(f"workers: {value} is not a number of workers (1 or more, or 'auto')")
        return value

    def state_path(self, worker: int | None = None) -> Path | None:
        """The decoder state file: one per worker (``decoder-state.w1``...) when there are several,
        ``worker`` None for the single-process collector."""
        if self.state_file:
            base = Path(self.state_file)
        elif self.parquet.dir:
            base = Path(self.parquet.dir) / ".shoal" / "decoder-state"
        else:
            return None
        return base if worker is None else base.with_name(f"{base.name}.w{worker}")


def usable_cores(
    cgroup_root: Path = Path("/sys/fs/cgroup"), self_cgroup: Path = Path("/proc/self/cgroup")
) -> int:
    """Cores this process may run on: its CPU affinity, and no more than the cgroup v2 CPU limit
    (``cpu.max``, rounded up) of its cgroup or any parent, which is what a container's CPU limit or
    systemd's ``CPUQuota=`` set."""
    cores = len(os.sched_getaffinity(0))
    try:
        line = next(x for x in self_cgroup.read_text().splitlines() if x.startswith("0::"))
    except (OSError, StopIteration):
        return cores
    group = cgroup_root / line[3:].strip().lstrip("/")
    for folder in (group, *group.parents):
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            if quota != "max":
                cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
        except (OSError, ValueError):
            pass
        if folder == cgroup_root:
            break
    return cores


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> CollectorConfig:
    """Read the TOML file (optional), apply environment then explicit overrides, validate."""
    return load_tree(CollectorConfig, path, ENV_PREFIX, environ, overrides).validate()
