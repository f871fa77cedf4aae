"""Adapters: the I/O edges (Kafka, codec, registry, Redis belief store) and their in-memory counterparts."""
