"""``shoal collect``: receive NetFlow v5/v9 and IPFIX, decode, archive to Parquet (and more sinks)."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline.collector.config import CollectorConfig, ConfigError, load_config
from pipeline.sinks.base import Sink, SinkError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from pipeline.collector.service import Collector
    from pipeline.metrics import Health

log = logging.getLogger("shoal.collect")

# Sink factories: (name, builder). A builder returns a Sink when its option was given, else None.
# The Kafka sink appends itself here (``--kafka BOOTSTRAP``) without touching the rest.
SinkBuilder = Callable[[argparse.Namespace, CollectorConfig], "Sink | None"]
SINK_BUILDERS: list[tuple[str, SinkBuilder]] = []


def _parquet_sink(args: argparse.Namespace, config: CollectorConfig) -> Sink | None:
    if not config.parquet.dir:
        return None
    from pipeline.sinks.parquet import ParquetSink

    p = config.parquet
    worker = getattr(args, "worker", None)
    return ParquetSink(
        p.dir,
        roll_seconds=p.roll_seconds,
        roll_bytes=p.roll_bytes,
        compression=p.compression,
        compression_level=p.compression_level,
        tag="" if worker is None else f"w{worker}",
    )


SINK_BUILDERS.append(("parquet", _parquet_sink))


def _kafka_sink(args: argparse.Namespace, config: CollectorConfig) -> Sink | None:
    if not getattr(args, "kafka", None):
        return None
    from pipeline.sinks.kafka import KafkaSink

    worker = getattr(args, "worker", None)
    name = "" if worker is None else f"w{worker}"
    return KafkaSink(args.kafka, args.kafka_topic, args.registry, dict(config.kafka), name)


SINK_BUILDERS.append(("kafka", _kafka_sink))

HELP = """\
Listen for NetFlow v5/v9 and IPFIX export packets, decode them into columnar flow batches and write
them to the configured sinks. Settings come from, in increasing precedence: built-in defaults, the
TOML file given with --config, environment variables SHOAL_COLLECT__<SECTION>__<KEY> (for example
SHOAL_COLLECT__BATCH__MAX_ROWS=100000 or SHOAL_COLLECT__RECEIVE__ALLOW_EXPORTERS=10.0.0.0/8,2001:db8::/32),
then these options. SIGINT/SIGTERM stop receiving, flush every pending batch, persist templates
and exit 0. With --workers N, N processes share the ports, each exporter hashed to one of them.
See docs/collector.md for the configuration file, workers and router examples.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "collect",
        help="receive NetFlow/IPFIX and archive flows (Parquet)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="UDP address to receive export packets on; repeat for several listeners "
        "(e.g. 0.0.0.0:2055, [::]:4739). IPv6 hosts in brackets. Overrides receive.listen.",
    )
    p.add_argument(
        "--parquet",
        metavar="DIR",
        help="write flows as Parquet (LZ4) under DIR/date=YYYY-MM-DD/hour=HH/ (files appear "
        "atomically when complete). Overrides parquet.dir.",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve /metrics, /healthz and /readyz at http://HOST:PORT/ (no host: 127.0.0.1). "
        "Overrides metrics.listen.",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration file (sections receive, batch, parquet, buffer, metrics, decoder).",
    )
    p.add_argument(
        "--allow-exporter",
        action="append",
        metavar="CIDR",
        help="accept export packets only from these source networks (repeatable); others are "
        "dropped and counted. Overrides receive.allow_exporters.",
    )
    p.add_argument(
        "--rcvbuf",
        type=int,
        metavar="BYTES",
        help="socket receive buffer (SO_RCVBUF) per listener. Overrides receive.rcvbuf_bytes.",
    )
    p.add_argument(
        "--workers",
        metavar="N",
        help="collector processes sharing the listening ports (SO_REUSEPORT; the kernel hashes each "
        "exporter to one of them), 1 to the number of cores, or 'auto' for one per core. "
        "Overrides workers (default 1).",
    )
    p.add_argument(
        "--kafka",
        metavar="BOOTSTRAP",
        help="also send flow batches to Kafka (Arrow IPC per message, keyed by exporter). TLS/SASL and "
        "other librdkafka settings come from SHOAL_KAFKA_<KEY> environment variables, never options.",
    )
    p.add_argument(
        "--kafka-topic", default="shoal.flows.v1", metavar="TOPIC", help="flows topic (default %(default)s)"
    )
    p.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.listen:
        out.setdefault("receive", {})["listen"] = list(args.listen)
    if args.allow_exporter:
        out.setdefault("receive", {})["allow_exporters"] = list(args.allow_exporter)
    if args.rcvbuf:
        out.setdefault("receive", {})["rcvbuf_bytes"] = args.rcvbuf
    if args.parquet:
        out.setdefault("parquet", {})["dir"] = args.parquet
    if args.metrics:
        out.setdefault("metrics", {})["listen"] = args.metrics
    if args.workers is not None:
        out["workers"] = args.workers
    return out


def serve_metrics(registry: Any, listen: str, command: str, health: Any = None) -> bool:
    """Start the metrics and health endpoints; False (said why on stderr) if they cannot be, e.g. the
    port is in use."""
    from pipeline.metrics import serve

    try:
        serve(registry, listen, health)
    except (OSError, ValueError) as exc:
        print(f"{command}: cannot serve metrics on {listen}: {exc} (choose another with --metrics)",
              file=sys.stderr)  # fmt: skip
        return False
    return True


def build_sinks(args: argparse.Namespace, config: CollectorConfig) -> list[Sink]:
    """Every configured sink (``args.worker``, if set, names them per worker)."""
    return [s for _, build in SINK_BUILDERS if (s := build(args, config)) is not None]


def readiness(collector: Collector, sinks: list[Sink]) -> Health:
    """The collector's readiness checks: listening, and every sink that can tell reachable."""
    from pipeline.metrics import POLL_SECONDS, Health

    health = Health()
    health.add("listening", lambda: bool(collector.sockets))
    for sink in sinks:
        if hasattr(sink, "reachable"):
            health.add(f"{sink.name} reachable", sink.reachable, POLL_SECONDS)
    return health


@dataclasses.dataclass(frozen=True)
class WorkerBuild:
    """What a worker process builds its collector from; crosses to the worker (picklable)."""

    config: CollectorConfig
    kafka: str | None
    kafka_topic: str

    def __call__(
        self, worker: int, registry: CollectorRegistry, listeners: list[socket.socket]
    ) -> tuple[Collector, Health]:
        from pipeline.collector.service import Collector

        args = argparse.Namespace(
            kafka=self.kafka, kafka_topic=self.kafka_topic, registry=registry, worker=worker
        )
        sinks = build_sinks(args, self.config)
        collector = Collector(self.config, sinks, registry, worker=worker, listeners=listeners)
        return collector, readiness(collector, sinks)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    return stop


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, overrides=_overrides(args))
        workers = config.worker_count()
    except ConfigError as exc:
        log.error("configuration: %s", exc)
        return 2
    if workers > 1:
        return _run_workers(args, config, workers)
    from pipeline.collector.service import Collector
    from pipeline.metrics import new_registry

    registry = new_registry()
    args.registry = registry
    from confluent_kafka import KafkaException

    try:
        sinks = build_sinks(args, config)
    except KafkaException as exc:  # e.g. an unknown librdkafka setting in [kafka] or SHOAL_KAFKA_*
        log.error("kafka sink: %s", exc)
        return 2
    if not sinks:
        log.error("no sink configured: give --parquet DIR or --kafka BOOTSTRAP")
        return 2

    collector = Collector(config, sinks, registry)
    stop = _stop_on_signals()
    health = readiness(collector, sinks)
    if config.metrics.listen and not serve_metrics(registry, config.metrics.listen, "shoal collect", health):
        return 1
    try:
        collector.start()
    except SinkError as exc:  # fail now rather than accept flows only to lose them
        log.error("sink cannot work: %s", exc)
        return 1
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 1
    # What exists now (modules, numba's and pyarrow's objects, templates) lives as long as the
    # collector: out of the garbage collector's reach, so neither the full collections that per-batch
    # objects trigger nor the one at exit walk it (benchmarks/README.md, Collector). Garbage first,
    # so none of it is kept for good.
    gc.collect()
    gc.freeze()
    print("shoal collect: listening on " + ", ".join(s.label for s in collector.sockets), flush=True)
    while not stop.wait(0.5):
        pass
    collector.stop()
    totals = " ".join(f"{k}={v}" for k, v in collector.summary().items())
    print(f"shoal collect: stopped: {totals}", flush=True)
    return 0


def _run_workers(args: argparse.Namespace, config: CollectorConfig, workers: int) -> int:
    """The supervisor of ``workers`` collector processes (pipeline.collector.workers)."""
    from pipeline.collector.workers import Supervisor, WorkerFailed
    from pipeline.metrics import POLL_SECONDS, Health, new_registry

    if not config.parquet.dir and not args.kafka:
        log.error("no sink configured: give --parquet DIR or --kafka BOOTSTRAP")
        return 2
    # [kafka] settings are a read-only mapping, which does not cross to a worker process
    config = dataclasses.replace(config, kafka=dict(config.kafka))
    registry = new_registry()
    supervisor = Supervisor(config, WorkerBuild(config, args.kafka, args.kafka_topic), workers, registry)
    stop = _stop_on_signals()
    if config.metrics.listen:
        health = Health()
        health.add("workers", supervisor.listening)
        health.add("workers' checks", supervisor.health, POLL_SECONDS)
        if not serve_metrics(registry, config.metrics.listen, "shoal collect", health):
            return 1
    try:
        supervisor.start()
    except WorkerFailed as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 1
    print("shoal collect: listening on " + ", ".join(supervisor.labels), flush=True)
    pids = ", ".join(str(w.process.pid) for w in supervisor.workers if w.process is not None)
    print(f"shoal collect: {workers} workers (pids {pids})", flush=True)
    failed = False
    while not stop.wait(0.5):
        try:
            supervisor.check()
        except WorkerFailed as exc:
            log.error("%s", exc)
            failed = True
            break
    totals = " ".join(f"{k}={v}" for k, v in supervisor.stop().items())
    print(f"shoal collect: stopped: {totals}", flush=True)
    return 1 if failed else 0
