"""``shoal confirm``: the confirmation app (Faust) between the partials and detections topics."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from pipeline.commands._detection_args import add_detection_args, detection_settings
from pipeline.commands._kafka_args import add_kafka_args, streams_config

HELP = """\
Merge the matcher workers' partial aggregates (partials topic, committed data only) into detections:
one per indicator and internal host, or per scanner and port, in tumbling windows. Confirm them by the
rules of --detections, apply analysts' verdicts (`shoal feedback`), and write every new version to the
compacted detections topic (key: detection id). State lives in a table backed by a changelog topic:
kill the app at any moment and a restart continues with exact counts. Run more instances with the same
[confirm] group to share the partials topic's partitions.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("confirm", help="confirmation app: partials -> detections (Faust, Kafka)",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_kafka_args(p)
    add_detection_args(p)
    p.add_argument("--instance-id", metavar="ID", help="stable instance identity (default: host name)")
    p.add_argument("--metrics", default="", metavar="HOST:PORT", help="serve Prometheus metrics here")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import faust

    from pipeline.confirm.app import build_app
    from pipeline.metrics import POLL_SECONDS, Health, new_registry, serve
    from pipeline.transport.client import BrokerProbe

    overrides = {"confirm": {"instance_id": args.instance_id}} if args.instance_id else None
    streams = streams_config(args, overrides)
    settings = detection_settings(args.detections_config)
    t = streams.topics
    missing = _missing_topics(
        streams.connection(args.kafka), [t.partials.name, t.detections.name, t.feedback.name]
    )
    if missing:
        print(f"shoal confirm: {missing}", file=sys.stderr)
        return 1
    registry = new_registry()
    app = build_app(args.kafka, streams, settings, registry)
    if args.metrics:
        health = Health()
        health.add("app running", lambda: app.shoal_running)
        health.add(
            "kafka reachable", BrokerProbe(streams.connection(args.kafka), t.partials.name), POLL_SECONDS
        )
        serve(registry, args.metrics, health)
    if args.duration:
        timer = threading.Timer(args.duration, os.kill, (os.getpid(), signal.SIGTERM))
        timer.daemon = True
        timer.start()
    print(f"shoal confirm: instance {streams.confirm.identity()} of group {streams.confirm.group}; "
          f"{t.partials.name} -> {t.detections.name}; feedback from {t.feedback.name}; "
          f"network {settings.detections.network}, {settings.detections.window_seconds}s windows, "
          f"{len(settings.detections.rules)} rules", flush=True)  # fmt: skip
    level = "warning" if logging.getLogger().level >= logging.WARNING else "info"
    worker = faust.Worker(app, loglevel=level, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
        if code:
            print(f"shoal confirm: stopped with status {code}", file=sys.stderr)
        return code
    return 0


def _missing_topics(kafka: Any, names: list[str]) -> str:
    """What is wrong with the topics the app needs ('' when all exist): Faust would idle silently."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        topics = AdminClient(kafka.config()).list_topics(timeout=15).topics
    except KafkaException as exc:
        return f"cannot reach Kafka: {exc}"
    absent = [n for n in names if n not in topics]
    return f"missing topics {', '.join(absent)} (create them with `shoal topics create`)" if absent else ""
