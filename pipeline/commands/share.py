"""``shoal share``: confirmed detections back out as shared intelligence, under the sharing policy."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.commands._kafka_args import KAFKA_HELP, streams_config

HELP = """\
Read the detections topic and share what the sharing policy (--policy, TOML: docs/sharing.md) allows:
one STIX 2.1 sighting per indicator and window (counts, first and last seen, this network as where it
was sighted), new indicators of confirmed scanners with a short validity, and analysts' false
positives back to the feed they came from. Every destination of the policy (Kafka sightings topic,
TAXII 2.1 collection, MISP instance, MISP feed directory, file) is fed by a loop of its own, at least
once from its own committed offsets and idempotent by id: one that is down is retried with backoff
while the others go on. No address of the constituency appears in anything sent unless a
destination's policy allows it; every refusal is counted and logged with its reason.
--dry-run prints what would go where (from --detections-file, or the topic read once) and writes a
STIX bundle of it, sending nothing.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("share", help="share confirmed detections (STIX sightings, indicators) by policy",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--policy", required=True, metavar="FILE", help="sharing policy (TOML; docs/sharing.md)")
    p.add_argument("--kafka", metavar="BOOTSTRAP", help=KAFKA_HELP)
    p.add_argument(
        "--config", metavar="FILE", help="streams TOML ([topics.detections], [share] group, [client])"
    )
    p.add_argument("--only", action="append", metavar="DESTINATION", help="run only these destinations")
    p.add_argument("--dry-run", action="store_true", help="print what would be shared where; send nothing")
    p.add_argument(
        "--detections-file", metavar="FILE", help="dry run: detection JSON lines (shoal run's output)"
    )
    p.add_argument("--bundle", default="shoal-shared.json", metavar="FILE",
                   help="dry run: STIX bundle of everything that would leave (default %(default)s)")  # fmt: skip
    p.add_argument("--metrics", default="", metavar="HOST:PORT", help="/metrics /healthz /readyz")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    p.set_defaults(func=run)


def load(path: str) -> Any:
    from pipeline.config import ConfigError
    from pipeline.share.policy import load_policy

    try:
        return load_policy(path)
    except ConfigError as exc:
        print(f"shoal share: policy {path}: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def run(args: argparse.Namespace) -> int:
    policy = load(args.policy)
    names = [d.name for d in policy.destinations]
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        print(
            f"shoal share: no destination {', '.join(unknown)} in {args.policy} ({', '.join(names)})",
            file=sys.stderr,
        )
        return 2
    if args.dry_run:
        return dry_run_command(args, policy)
    if not args.kafka:
        print("shoal share: --kafka is needed (or --dry-run)", file=sys.stderr)
        return 2
    return serve(args, policy)


def read_detections_file(path: str) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError as exc:
                print(f"shoal share: {path}:{number}: not JSON ({exc}); skipped", file=sys.stderr)
    return out


def read_topic_once(args: argparse.Namespace) -> list[dict[str, Any]]:
    from confluent_kafka import Consumer, TopicPartition

    streams = streams_config(args)
    topic = streams.topics.detections.name
    consumer = Consumer(streams.connection(args.kafka).config(**{
        "group.id": f"{streams.share.group}.dry-run", "enable.auto.commit": False,
        "isolation.level": "read_committed", "auto.offset.reset": "earliest"}))  # fmt: skip
    out: list[dict[str, Any]] = []
    bad = 0
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        left = {p for p, end in ends.items() if end > 0}
        while left:
            for msg in consumer.consume(500, timeout=1.0):
                if msg.error() is None and msg.value():
                    try:
                        out.append(json.loads(msg.value()))
                    except ValueError:
                        bad += 1
                    if msg.offset() + 1 >= ends[msg.partition()]:
                        left.discard(msg.partition())
    finally:
        consumer.close()
    if bad:
        print(f"shoal share: {bad} messages of {topic} are not JSON; skipped", file=sys.stderr)
    return out


def dry_run_command(args: argparse.Namespace, policy: Any) -> int:
    if args.detections_file:
        detections = read_detections_file(args.detections_file)
    elif args.kafka:
        detections = read_topic_once(args)
    else:
        print("shoal share --dry-run: give --detections-file or --kafka", file=sys.stderr)
        return 2
    print(report(policy, detections, Path(args.bundle), only=args.only), end="")
    return 0


def report(policy: Any, detections: list[dict[str, Any]], bundle: Path | None, only: list[str] | None = None,
           prefix: str = "shoal share (dry run)") -> str:  # fmt: skip
    """What ``detections`` would share where under ``policy``, as text; writes the bundle."""
    import stix2

    from pipeline.share.build import context as share_context
    from pipeline.share.delivery import dry_run

    shares, outboxes = dry_run(policy, detections)
    kinds = Counter(s.kind for s in shares)
    lines = [f"{prefix}: {len(detections)} detection versions -> {len(shares)} shares "
             f"(sightings {kinds['sighting']}, new indicators {kinds['indicator']}, "
             f"false positives {kinds['false_positive']})"]  # fmt: skip
    leaving: dict[str, Any] = {}
    for name, outbox in outboxes.items():
        if only and name not in only:
            continue
        going = list(outbox.pending.values())
        leaving.update((s.id, s) for s in going)
        why = Counter(reason for _, reason, _ in outbox.refusals)
        refused = ", ".join(f"{r}: {n}" for r, n in sorted(why.items())) or "none"
        lines.append(f"  {name} ({outbox.config.type}, up to TLP:{outbox.config.tlp_ceiling.upper()}): "
                     f"{len(going)} would go; refused {sum(why.values())} ({refused})")  # fmt: skip
        # Routing by kind is the policy working as meant: the other reasons first, a few of each.
        shown = sorted(outbox.refusals, key=lambda r: r[1] == "kind")[:4]
        for share, reason, found in shown:
            extra = f", {len(found)} constituent address(es)" if found else ""
            what = share.indicator_value or share.scanner or share.id
            lines.append(f"      refused {share.kind} of {what} ({share.flows} flows, TLP:{share.tlp.upper()}, "
                         f"confidence {share.confidence}): {reason}{extra}")  # fmt: skip
    if bundle is not None:
        ctx = share_context(policy)
        objects = [ctx.identity, *ctx.markings_of(list(leaving.values()))]
        objects += [o for s in leaving.values() for o in s.objects]
        text = stix2.Bundle(objects=objects, allow_custom=False).serialize(pretty=True)
        bundle.write_text(text + "\n", encoding="utf-8")
        lines.append(
            f"  STIX bundle of what would leave: {bundle} ({len(leaving)} shares, {len(objects)} objects)"
        )
    return "\n".join(lines) + "\n"


def serve(args: argparse.Namespace, policy: Any) -> int:
    from pipeline.commands._signals import stop_event
    from pipeline.metrics import POLL_SECONDS, Health, new_registry
    from pipeline.metrics import serve as serve_metrics
    from pipeline.share.build import context as share_context
    from pipeline.share.delivery import ShareMetrics
    from pipeline.share.destinations import open_destination
    from pipeline.share.stream import DestinationLoop
    from pipeline.transport.client import BrokerProbe

    streams = streams_config(args)
    kafka = streams.connection(args.kafka)
    registry = new_registry()
    metrics = ShareMetrics(registry)
    stop = stop_event(args.duration)
    ctx = share_context(policy)
    loops: list[DestinationLoop] = []
    for configured in policy.destinations:
        if args.only and configured.name not in args.only:
            continue
        config = configured
        if config.type == "kafka" and not config.topic:
            config = dataclasses.replace(config, topic=streams.topics.sightings.name)
        try:
            destination = open_destination(config, ctx, kafka)
        except (OSError, ValueError) as exc:
            print(f"shoal share: destination {config.name}: {exc}", file=sys.stderr)
            return 2
        loops.append(DestinationLoop(kafka, streams.topics.detections.name, streams.share.group, policy, config,
                                     destination, metrics, stop))  # fmt: skip
    if args.metrics:
        health = Health()
        health.add("detections read", lambda: all(loop.ready.is_set() for loop in loops))
        health.add("kafka reachable", BrokerProbe(kafka, streams.topics.detections.name), POLL_SECONDS)
        serve_metrics(registry, args.metrics, health)
    errors: list[str] = []

    def guarded(loop: DestinationLoop) -> None:
        try:
            loop.run()
        except Exception as exc:  # one destination's fatal error is reported, the others go on
            errors.append(f"{loop.config.name}: {type(exc).__name__}: {exc}")
            print(f"shoal share: destination {loop.config.name} stopped: {exc}", file=sys.stderr, flush=True)

    threads = [
        threading.Thread(target=guarded, args=(loop,), name=f"share-{loop.config.name}") for loop in loops
    ]
    for thread in threads:
        thread.start()
    print(f"shoal share: {streams.topics.detections.name} -> {', '.join(f'{c.config.name} ({c.config.type})' for c in loops)}; "
          f"as {policy.identity.name}", flush=True)  # fmt: skip
    while any(t.is_alive() for t in threads) and not stop.is_set():
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join(30)
    return 1 if errors else 0
