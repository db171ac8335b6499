"""Create Shoal's topics with the AdminClient, from configuration (names, partitions, replication)."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.transport.client import KafkaConnection, connection
from pipeline.transport.config import TopicConfig


def new_topic(topic: TopicConfig) -> NewTopic:
    config: dict[str, str] = {}
    if topic.retention_ms:
        config["retention.ms"] = str(topic.retention_ms)
    if topic.compact:
        # Tombstones (revoked/expired indicators) must outlive a worker's full read of the topic.
        policy = "compact,delete" if topic.retention_ms else "compact"
        config.update({"cleanup.policy": policy, "delete.retention.ms": str(24 * 3600 * 1000)})
    return NewTopic(topic.name, num_partitions=topic.partitions, replication_factor=topic.replication,
                    config=config)  # fmt: skip


def create_topics(
    kafka: KafkaConnection | str, topics: list[TopicConfig], timeout: float = 30.0
) -> dict[str, str]:
    """Create each topic; returns name -> "created", "exists" or the broker's error text."""
    admin = AdminClient(connection(kafka).config())
    futures = admin.create_topics([new_topic(t) for t in topics], request_timeout=timeout)
    out: dict[str, str] = {}
    for name, future in futures.items():
        try:
            future.result(timeout)
            out[name] = "created"
        except TimeoutError:
            out[name] = f"no answer within {timeout:g}s"
        except KafkaException as exc:
            err = exc.args[0]
            out[name] = "exists" if err.code() == KafkaError.TOPIC_ALREADY_EXISTS else err.str()
    return out
