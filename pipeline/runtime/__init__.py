"""Embedded runtime: every stage in one process, wired with the same stage code as the Kafka deployment."""
