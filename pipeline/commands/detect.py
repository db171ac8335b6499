"""``shoal detect``: a matcher worker of a consumer group on the flows topic (exactly-once alerts)."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from pathlib import Path
from typing import Any

from pipeline.commands._detection_args import add_detection_args, detection_settings
from pipeline.commands._kafka_args import add_kafka_args, streams_config
from pipeline.commands._signals import stop_event

log = logging.getLogger("shoal.detect")

HELP = """\
Consume flow batches from the flows topic as a member of a consumer group, match every flow against
the intel on the indicators topic (rebuilt and swapped in whenever the topic changes), and produce one
alert per hit to the alerts topic in a Kafka transaction together with the consumed offsets: readers
with isolation.level=read_committed see every alert exactly once, across crashes and restarts. Run
more workers with the same --group to scale, up to the flows topic's partition count.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("detect", help="Kafka matcher worker (consumer group, exactly-once alerts)",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_kafka_args(p)
    add_detection_args(p)
    p.add_argument("--group", metavar="NAME", help="consumer group (default shoal-detect)")
    p.add_argument("--instance-id", metavar="ID",
                   help="stable worker identity (default: host name); distinct per worker on one host")  # fmt: skip
    p.add_argument("--allowlist", action="append", default=[], metavar="FILE",
                   help="MISP warninglist or CIDR list whose ranges must not alert (repeatable)")  # fmt: skip
    p.add_argument("--geoip", action="append", default=[], metavar="MMDB", help="MaxMind-format database(s)")
    p.add_argument(
        "--metrics", default="", metavar="HOST:PORT", help="/metrics /healthz /readyz (no host: loopback)"
    )
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from pipeline.commands.collect import serve_metrics
    from pipeline.commands.match import load_allowlists
    from pipeline.metrics import POLL_SECONDS, Health, new_registry
    from pipeline.runtime.detect import DetectWorker
    from pipeline.runtime.intel_follower import IntelFollower
    from pipeline.transport.client import KafkaUnreachable, check_reachable

    detect: dict[str, Any] = {}
    if args.group:
        detect["group"] = args.group
    if args.instance_id:
        detect["instance_id"] = args.instance_id
    config = streams_config(args, {"detect": detect} if detect else None)
    settings = detection_settings(args.detections_config)
    allow = load_allowlists(args.allowlist)
    geoip = None
    if args.geoip:
        from detectors.geoip import GeoIP

        geoip = GeoIP([Path(p) for p in args.geoip])
    registry = new_registry()
    kafka = config.connection(args.kafka)
    from pipeline.transport.access import preflight

    preflight(kafka)
    started: dict[str, Any] = {}
    if args.metrics:  # served from the start: liveness answers while the first index is built
        health = Health()
        health.add("index loaded", lambda: "handle" in started)
        health.add(
            "kafka reachable", lambda: "worker" in started and started["worker"].reachable(), POLL_SECONDS
        )
        if not serve_metrics(registry, args.metrics, "shoal detect", health):
            return 1
    try:
        check_reachable(kafka)
        follower = IntelFollower(kafka, config.topics.indicators.name, registry, allow, geoip,
                                 config.detect.intel_settle_seconds)  # fmt: skip
        handle = follower.start()
        worker = DetectWorker(kafka, config, handle, registry, settings)
        started.update(handle=handle, worker=worker)
    except (KafkaException, TimeoutError, KafkaUnreachable) as exc:
        print(f"shoal detect: {exc}", file=sys.stderr)
        return 1
    # What exists now (intel, index, clients) lives as long as the worker: out of the collector's
    # reach, so the full collections that per-batch objects trigger do not walk it every time.
    gc.freeze()
    stop = stop_event(args.duration)
    t = config.topics
    print(f"shoal detect: worker {worker.identity} of group {config.detect.group}; "
          f"{handle.matcher.index.count} indicators from {t.indicators.name}; "
          f"{t.flows.name} -> {t.alerts.name}", flush=True)  # fmt: skip
    try:
        worker.run(stop)
    except KafkaException as exc:
        print(f"shoal detect: fatal Kafka error, exiting: {exc}", file=sys.stderr)
        return 1
    finally:
        follower.stop()
    print(f"shoal detect: stopped; {handle.matcher.stats.flows} flows matched, {worker.sink.alerts} alerts",
          flush=True)  # fmt: skip
    return 0
