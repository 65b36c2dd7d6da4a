"""The notifier's subscription: the registry's events in, webhook deliveries written."""

from __future__ import annotations

from services.notifier import handlers
from services.notifier.resources import Resources
from shared.events import Event
from shared.kafka import Topics
from shared.pipeline import Subscription


async def handle_batch(resources: Resources, batch: list[Event]) -> None:
    await handlers.record_events(resources.pool, batch)


def _topics(topics: Topics) -> list[str]:
    return [
        topics.registration_decided,
        topics.registration_outcomes,
        topics.device_signals,
        topics.bulk_publish,
    ]


SUBSCRIPTION = Subscription(topics=_topics, handle=handle_batch)
