"""``shoal topics create``: create Shoal's topics (flows, alerts, indicators, partials, detections,
feedback) from configuration."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.commands._kafka_args import add_kafka_args, streams_config


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("topics", help="manage Shoal's Kafka topics")
    sub = p.add_subparsers(dest="topics_command", metavar="SUBCOMMAND", required=True)
    create = sub.add_parser("create", help="create every Shoal topic (existing ones are kept)")
    add_kafka_args(create)
    create.set_defaults(func=run_create)


def run_create(args: argparse.Namespace) -> int:
    from pipeline.transport.client import KafkaUnreachable, check_reachable
    from pipeline.transport.topics import create_topics

    config = streams_config(args)
    from confluent_kafka import KafkaException

    from pipeline.transport.access import preflight

    preflight(config.connection(args.kafka))

    try:
        check_reachable(config.connection(args.kafka))
        results = create_topics(config.connection(args.kafka), config.topics.all())
    except (KafkaException, KafkaUnreachable) as exc:
        print(f"shoal topics: {exc}", file=sys.stderr)
        return 1
    failed = 0
    for topic in config.topics.all():
        status = results.get(topic.name, "no answer")
        failed += status not in ("created", "exists")
        print(f"{topic.name}: {status} (partitions {topic.partitions}, replication {topic.replication}"
              f"{', compacted' if topic.compact else ''})")  # fmt: skip
    return 1 if failed else 0
