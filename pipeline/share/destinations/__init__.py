"""Receivers of shared intelligence behind one interface (:class:`base.Destination`), one module each,
imported only when a policy names that type (a Kafka-only deployment never imports PyMISP)."""

from __future__ import annotations

import importlib

from pipeline.share.destinations.base import Destination, ShareContext
from pipeline.share.policy import DestinationConfig
from pipeline.transport.client import KafkaConnection

CLASSES = {
    "kafka": ("pipeline.share.destinations.kafka", "KafkaDestination"),
    "file": ("pipeline.share.destinations.file", "FileDestination"),
    "taxii": ("pipeline.share.destinations.taxii", "TaxiiDestination"),
    "misp": ("pipeline.share.destinations.misp", "MispDestination"),
    "misp-feed": ("pipeline.share.destinations.misp_feed", "MispFeedDestination"),
}


def open_destination(
    config: DestinationConfig, context: ShareContext, kafka: KafkaConnection | None = None
) -> Destination:
    module, name = CLASSES[config.type]
    cls = getattr(importlib.import_module(module), name)
    if config.type == "kafka":
        if kafka is None:
            raise ValueError(f"destination {config.name}: a kafka destination needs --kafka")
        return cls(config, context, kafka)
    return cls(config, context)
