"""Webhooks: registry events from Kafka turned into signed HTTP deliveries (docs/operations.md)."""
