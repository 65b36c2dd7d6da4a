"""Kafka for the tests that produce records themselves (the services' producers are
opened and closed by their resources)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from shared.kafka import Producer
from shared.settings import KafkaSettings


@contextlib.asynccontextmanager
async def running_producer(settings: KafkaSettings) -> AsyncIterator[Producer]:
    """A started :class:`shared.kafka.Producer`, stopped on leaving the block."""
    producer = Producer(settings)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()
