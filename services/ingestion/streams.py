"""Ingestion's wiring on Kafka: publish requests and their continuation chunks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from services.ingestion import handlers
from shared.events import BulkPublish, Event
from shared.kafka import Topics, publish_many
from shared.pipeline import Pipeline


def subscriptions(topics: Topics) -> Sequence[str]:
    return [topics.bulk_publish]


def batch_handler(chunk_rows: int) -> Callable[[Pipeline], Callable[[list[Event]], Awaitable[None]]]:
    def factory(pipeline: Pipeline) -> Callable[[list[Event]], Awaitable[None]]:
        async def handle(batch: list[Event]) -> None:
            requests = [e for e in batch if isinstance(e, BulkPublish)]
            following = await handlers.publish_chunks(pipeline.pool, requests, chunk_rows)
            await publish_many(
                pipeline.producer, [(pipeline.topics.bulk_publish, e.registration_id, e) for e in following]
            )

        return handle

    return factory
