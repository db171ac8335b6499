"""``shoal feedback``: an analyst's verdict on a detection, to the feedback topic."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from pipeline.commands._kafka_args import add_kafka_args, streams_config

HELP = """\
Record an analyst's verdict on a detection (its id, as on the detections topic or in
shoal-detections.jsonl). `false-positive` marks it so and silences its key (indicator and host, or
scanner and port) for [detections] suppress_seconds; the sharing stage reports it to the indicator's
source. `confirm` confirms it whatever the rules say. The confirmation app applies the verdict within
a tick and issues a new version of the detection.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("feedback", help="confirm or reject a detection (analyst verdict)",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("verdict", choices=["confirm", "false-positive"])
    p.add_argument("detection_id", metavar="DETECTION_ID")
    p.add_argument("--reason", metavar="TEXT")
    p.add_argument("--analyst", metavar="NAME", help="who decided (default: the login name)")
    add_kafka_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from confluent_kafka import Consumer, KafkaException, Producer

    from pipeline.confirm.app import feedback_message
    from pipeline.transport.detections import FEEDBACK_SCHEMA, SCHEMA_HEADER, encode_feedback
    from pipeline.transport.indicators import assign_from_beginning, read_to_end

    config = streams_config(args)
    kafka = config.connection(args.kafka)
    topics = config.topics
    found: dict[str, Any] = {}

    def keep(msg: Any) -> None:
        if msg.key() == args.detection_id.encode() and msg.value():
            found["detection"] = json.loads(msg.value())

    consumer = Consumer(kafka.config(**{"group.id": "shoal-feedback", "enable.auto.commit": False,
                                        "isolation.level": "read_committed"}))  # fmt: skip
    try:
        read_to_end(consumer, assign_from_beginning(consumer, topics.detections.name), keep)
    except (KafkaException, TimeoutError) as exc:
        print(f"shoal feedback: cannot read {topics.detections.name}: {exc}", file=sys.stderr)
        return 1
    finally:
        consumer.close()
    detection = found.get("detection")
    if detection is None:
        print(
            f"shoal feedback: no detection {args.detection_id} on {topics.detections.name}", file=sys.stderr
        )
        return 1
    verdict = args.verdict.replace("-", "_")
    record = feedback_message(detection, verdict, args.reason, args.analyst or getpass.getuser())
    key, value = encode_feedback(record)
    producer = Producer(kafka.config(**{"acks": "all", "enable.idempotence": True}))
    producer.produce(topics.feedback.name, value, key=key, headers=[(SCHEMA_HEADER, FEEDBACK_SCHEMA)])
    if producer.flush(30):
        print(f"shoal feedback: not delivered to {topics.feedback.name}", file=sys.stderr)
        return 1
    host = detection["internal_host"] or "-"
    print(f"shoal feedback: {verdict} recorded for {detection['kind']} detection {detection['id']} "
          f"({detection['key']}, host {host}, window {detection['window_start']})")  # fmt: skip
    return 0
