"""librdkafka settings shared by every Kafka client Shoal makes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

PREFIX = "SHOAL_KAFKA_"


def client_settings(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """librdkafka settings from the environment: SHOAL_KAFKA_<KEY> with '_' for '.', for example
    SHOAL_KAFKA_SECURITY_PROTOCOL=SASL_SSL or SHOAL_KAFKA_SASL_PASSWORD=... — credentials never go
    on the command line (or into shell history)."""
    env = os.environ if environ is None else environ
    return {k[len(PREFIX) :].lower().replace("_", "."): v for k, v in env.items() if k.startswith(PREFIX)}


def client_config(bootstrap: str, **settings: Any) -> dict[str, Any]:
    """``bootstrap.servers`` + quiet logging + ``settings``, then the environment's settings on top."""
    return {"bootstrap.servers": bootstrap, "log_level": 3, **settings, **client_settings()}
