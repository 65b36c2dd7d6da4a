"""The notifier's subscriptions: the registry's events in, webhook deliveries written; and
the registration hooks' calls (docs/registration-hook.md), each handed to a task of its own
as it arrives, so a slow hook never holds the partition (its offset is committed once
handed over: a call lost with its instance is asked for again by the device's retry)."""

from __future__ import annotations

from services.notifier import handlers
from services.notifier.resources import Resources
from shared.events import Event, HookRequested
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


async def handle_hook_batch(resources: Resources, batch: list[Event]) -> None:
    for event in batch:
        if isinstance(event, HookRequested):
            resources.start_call(event)


HOOK_SUBSCRIPTION = Subscription(topics=lambda topics: [topics.registration_hooks], handle=handle_hook_batch)
