"""``shoal intel``: inspect intel sources (``stats``) and publish them to the indicators topic
(``publish`` once, ``sync`` on a schedule)."""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.commands._kafka_args import add_kafka_args, streams_config


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("intel", help="inspect intel sources")
    sub = p.add_subparsers(dest="intel_command", metavar="SUBCOMMAND", required=True)
    stats = sub.add_parser(
        "stats", help="what each source yields: indicators by kind, unsupported, expired..."
    )
    stats.add_argument("sources", nargs="+", metavar="SOURCE")
    stats.add_argument("--allowlist", action="append", default=[], metavar="FILE")
    stats.add_argument("--min-confidence", type=int, default=0)
    stats.add_argument("--all-attributes", action="store_true")
    stats.set_defaults(func=run_stats)
    publish = sub.add_parser("publish", help="publish sources to the Kafka indicators topic (changes only)")
    sync = sub.add_parser("sync", help="publish sources again every --every seconds (TAXII, MISP, files)")
    for q in (publish, sync):
        add_kafka_args(q)
        q.add_argument("sources", nargs="+", metavar="SOURCE")
        q.add_argument("--min-confidence", type=int, default=0)
        q.add_argument("--all-attributes", action="store_true")
        q.add_argument("--replace-old-layout", action="store_true",
                       help="withdraw the topic's indicator/1 messages (one JSON indicator each) while publishing: "
                            "converts a topic of the old layout in place (docs/kafka.md, 'Migrating')")  # fmt: skip
    publish.set_defaults(func=run_publish)
    withdraw = sub.add_parser(
        "withdraw", help="delete feeds from the Kafka indicators topic (workers drop them)"
    )
    add_kafka_args(withdraw)
    withdraw.add_argument("feeds", nargs="+", metavar="FEED", help="a source as it was published")
    withdraw.set_defaults(func=run_withdraw)
    sync.add_argument("--every", type=float, default=300.0, metavar="SECONDS", help="default %(default)s")
    sync.add_argument("--metrics", default="", metavar="HOST:PORT",
                      help="serve /metrics, /healthz, /readyz here (no host: 127.0.0.1)")  # fmt: skip
    sync.add_argument(
        "--rounds", type=int, metavar="N", help="stop after N rounds (default: run until stopped)"
    )
    sync.set_defaults(func=run_sync)


def _kind(condition: Any) -> str:
    if condition.network is None:
        return "as"
    family = f"ipv{condition.network.version}"
    exact = condition.network.num_addresses == 1
    extra = "+port" if condition.src_ports or condition.dst_ports else ""
    return f"{family}-{'address' if exact else 'cidr'}{extra}"


def run_stats(args: argparse.Namespace) -> int:
    from detectors.index import IndicatorIndex
    from pipeline.intel import IntelError, load_source
    from pipeline.intel.allowlists import Allowlist, load_allowlist

    now = datetime.now(UTC)
    allow = Allowlist()
    for path in args.allowlist:
        load_allowlist(Path(path), into=allow)
    status = 0
    for spec in args.sources:
        try:
            load = load_source(spec, args.min_confidence, not args.all_attributes, now=now)
        except IntelError as exc:
            print(f"{spec}: ERROR {exc}")
            status = 1
            continue
        kinds = Counter(_kind(c) for i in load.objects for c in i.conditions) + _table_kinds(load.table)
        print(f"{spec}: {load.count} indicators")
        print(f"  conditions by kind: {dict(sorted(kinds.items()))}")
        print(f"  duplicates collapsed: {load.duplicates}")
        print(f"  unsupported: {dict(load.unsupported) or 0}")
        for reason, example in sorted(load.examples.items()):
            print(f"    e.g. {reason}: {example}")
        print(f"  skipped (revoked/expired/confidence/to_ids): {dict(load.skipped) or 0}")
        if allow.entries:
            suppressed = _suppressed_by_allowlist(IndicatorIndex.build((), allow), load)
            print(f"  indicators inside allowlisted ranges: {suppressed}")
        for error in load.errors:
            print(f"  error: {error}")
    return status


def _table_kinds(table: Any) -> Counter[str]:
    """Conditions by kind among a table's rows, counted column-wise."""
    import numpy as np

    v4, port = table.is_v4(), table.numbers("dst_port") >= 0
    exact = table.numbers("prefix") == np.where(v4, 32, 128)
    out: Counter[str] = Counter()
    for family, f in (("ipv4", v4), ("ipv6", ~v4)):
        for shape, e in (("address", exact), ("cidr", ~exact)):
            for extra, p in (("", ~port), ("+port", port)):
                if n := int((f & e & p).sum()):
                    out[f"{family}-{shape}{extra}"] = n
    return out


def _suppressed_by_allowlist(index: Any, load: Any) -> int:
    """Conditions whose own first address is allowlisted (they would never alert there)."""
    import numpy as np

    from detectors.addresses import Addresses
    from pipeline.schemas import ip_to_bytes16

    rows = [ip_to_bytes16(c.network.network_address) for i in load.objects for c in i.conditions if c.network]
    raw = np.concatenate(
        [np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, 16), load.table.network_bytes()]
    )
    if not len(raw):
        return 0
    hit, _ = index.allow.lookup(Addresses(np.ascontiguousarray(raw)))
    return len(np.unique(hit))


def _publish_once(args: argparse.Namespace, config: Any, metrics: Any = None) -> int:
    """Load every source and publish its differences; a source that fails to load publishes nothing
    (its indicators stay as they were, rather than being withdrawn by a network error)."""
    from confluent_kafka import KafkaException

    from pipeline.intel import IntelError, load_source
    from pipeline.transport.indicators import publish

    topic = config.topics.indicators.name
    now = datetime.now(UTC)
    loads, specs, status = [], [], 0
    for spec in args.sources:
        try:
            loads.append(load_source(spec, args.min_confidence, not args.all_attributes, now=now))
            specs.append(spec)
        except IntelError as exc:
            print(f"{spec}: ERROR {exc} (nothing published for it)")
            status = 1
            if metrics:
                metrics.outcome(spec, "load_error")
    for load in loads:
        for error in load.errors:
            print(f"{load.source}: error: {error}")
    try:
        reports = publish(
            config.connection(args.kafka), topic, loads, replace_old_layout=args.replace_old_layout
        )
    except (KafkaException, TimeoutError) as exc:
        print(f"shoal intel: publishing to {topic} failed: {exc}")
        for spec in specs if metrics else ():
            metrics.outcome(spec, "publish_error")
        return 1
    for spec, load in zip(specs, loads, strict=True) if metrics else ():
        metrics.outcome(spec, "ok", load.count)
    for r in reports:
        for error in r.errors:
            print(f"{r.feed}: error: {error}")
        sent = f" ({r.mode}: {r.messages} messages, {r.bytes / 1e3:,.0f} kB)" if r.messages else ""
        print(f"{r.feed}: {r.new} new, {r.changed} changed, {r.withdrawn} withdrawn, {r.unchanged} unchanged "
              f"-> {topic}{sent}")  # fmt: skip
    return status


def run_publish(args: argparse.Namespace) -> int:
    from pipeline.transport.access import preflight

    config = streams_config(args)
    preflight(config.connection(args.kafka))
    return _publish_once(args, config)


def run_withdraw(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from pipeline.transport.access import preflight
    from pipeline.transport.indicators import withdraw

    config = streams_config(args)
    preflight(config.connection(args.kafka))
    topic = config.topics.indicators.name
    try:
        held = withdraw(config.connection(args.kafka), topic, args.feeds)
    except (KafkaException, TimeoutError) as exc:
        print(f"shoal intel: withdrawing from {topic} failed: {exc}")
        return 1
    for feed in args.feeds:
        print(f"{feed}: {held[feed]} withdrawn from {topic}" if feed in held else f"{feed}: not on {topic}")
    return 0 if len(held) == len(args.feeds) else 1


def run_sync(args: argparse.Namespace) -> int:
    from pipeline.commands._signals import stop_event
    from pipeline.transport.access import preflight

    config = streams_config(args)
    preflight(config.connection(args.kafka))
    metrics = None
    if args.metrics:
        from pipeline.metrics import POLL_SECONDS, Health, new_registry, serve
        from pipeline.runtime.sync_metrics import SyncMetrics
        from pipeline.transport.client import BrokerProbe

        registry = new_registry()
        metrics = SyncMetrics(registry, args.sources)
        health = Health()
        health.add("first round done", lambda: rounds > 0)
        topic = config.topics.indicators.name
        health.add("kafka reachable", BrokerProbe(config.connection(args.kafka), topic), POLL_SECONDS)
        serve(registry, args.metrics, health)
    stop = stop_event()
    rounds = 0
    status = 0
    while not stop.is_set():
        status = _publish_once(args, config, metrics)
        rounds += 1
        if args.rounds is not None and rounds >= args.rounds:
            break
        stop.wait(args.every)
    return status
