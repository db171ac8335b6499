"""Shoal: NetFlow/IPFIX collection, Kafka transport and shared-intelligence detection for NRENs."""

__version__ = "0.1.0"
