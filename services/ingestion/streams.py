"""Ingestion's subscription: publish requests and their continuation chunks."""

from __future__ import annotations

from services.ingestion import handlers
from services.ingestion.resources import Resources
from shared.events import BulkPublish, Event
from shared.kafka import Topics, publish_many
from shared.pipeline import Subscription


async def handle_batch(resources: Resources, batch: list[Event]) -> None:
    requests = [e for e in batch if isinstance(e, BulkPublish)]
    following = await handlers.publish_chunks(resources.pool, requests, resources.limits.publish_chunk_rows)
    await publish_many(resources.producer, resources.topics, following)


def _topics(topics: Topics) -> list[str]:
    return [topics.bulk_publish]


SUBSCRIPTION = Subscription(topics=_topics, handle=handle_batch)
