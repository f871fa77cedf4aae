"""Adapters: agegate's edges to Kafka, Redis and the schema registry (base + core imports only)."""
