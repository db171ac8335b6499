"""Kafka transport: message formats of Shoal's topics and the clients that move them."""
