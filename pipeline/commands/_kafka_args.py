"""Options shared by the Kafka commands (detect, topics, intel publish/sync)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

KAFKA_HELP = ("Kafka bootstrap servers. TLS/SASL and other librdkafka settings come from SHOAL_KAFKA_<KEY> "
              "environment variables (e.g. SHOAL_KAFKA_SASL_PASSWORD), never options.")  # fmt: skip


def add_kafka_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kafka", required=True, metavar="BOOTSTRAP", help=KAFKA_HELP)
    p.add_argument("--config", metavar="FILE",
                   help="TOML file with [topics.flows|alerts|indicators] (name, partitions, replication, "
                        "retention_ms), [detect] and [client] (librdkafka settings such as "
                        "security.protocol); env SHOAL_STREAMS__SECTION__KEY overrides it")  # fmt: skip


def streams_config(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Any:
    from pipeline.config import ConfigError
    from pipeline.transport.config import load_streams_config

    try:
        return load_streams_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"shoal: configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
