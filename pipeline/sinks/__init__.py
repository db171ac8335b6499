"""Where flow batches go after decoding: one small interface, several implementations."""

from pipeline.sinks.base import Sink, SinkError

__all__ = ["Sink", "SinkError"]
