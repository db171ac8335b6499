"""``shoal collect``: receive NetFlow v5/v9 and IPFIX, decode, archive to Parquet (and more sinks)."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from pipeline.collector.config import CollectorConfig, ConfigError, load_config
from pipeline.sinks.base import Sink, SinkError

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
    return ParquetSink(
        p.dir,
        roll_seconds=p.roll_seconds,
        roll_bytes=p.roll_bytes,
        compression=p.compression,
        compression_level=p.compression_level,
    )


SINK_BUILDERS.append(("parquet", _parquet_sink))


def _kafka_sink(args: argparse.Namespace, config: CollectorConfig) -> Sink | None:
    if not getattr(args, "kafka", None):
        return None
    from pipeline.sinks.kafka import KafkaSink

    return KafkaSink(args.kafka, args.kafka_topic, args.registry, dict(config.kafka))


SINK_BUILDERS.append(("kafka", _kafka_sink))

HELP = """\
Listen for NetFlow v5/v9 and IPFIX export packets, decode them into columnar flow batches and write
them to the configured sinks. Settings come from, in increasing precedence: built-in defaults, the
TOML file given with --config, environment variables SHOAL_COLLECT__<SECTION>__<KEY> (for example
SHOAL_COLLECT__BATCH__MAX_ROWS=100000 or SHOAL_COLLECT__RECEIVE__ALLOW_EXPORTERS=10.0.0.0/8,2001:db8::/32),
then these options. SIGINT/SIGTERM stop receiving, flush every pending batch, persist templates
and exit 0. See docs/collector.md for the configuration file and router examples.
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


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, overrides=_overrides(args))
    except ConfigError as exc:
        log.error("configuration: %s", exc)
        return 2
    from pipeline.collector.service import Collector
    from pipeline.metrics import Health, new_registry

    registry = new_registry()
    args.registry = registry
    from confluent_kafka import KafkaException

    try:
        sinks = [s for _, build in SINK_BUILDERS if (s := build(args, config)) is not None]
    except KafkaException as exc:  # e.g. an unknown librdkafka setting in [kafka] or SHOAL_KAFKA_*
        log.error("kafka sink: %s", exc)
        return 2
    if not sinks:
        log.error("no sink configured: give --parquet DIR or --kafka BOOTSTRAP")
        return 2

    collector = Collector(config, sinks, registry)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    if config.metrics.listen:
        health = Health()
        health.add("listening", lambda: bool(collector.sockets))
        for sink in sinks:
            if hasattr(sink, "reachable"):
                health.add(f"{sink.name} reachable", sink.reachable)
        if not serve_metrics(registry, config.metrics.listen, "shoal collect", health):
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
