"""Deduplication's subscription: registration requests and device signals in; decided
registrations (for provisioning), refusals (for the intake) and the calls of registration
hooks (for the notifier, docs/registration-hook.md) out."""

from __future__ import annotations

from services.dedup import handlers
from services.dedup.resources import Resources
from shared.events import DeviceSignal, Event, RegistrationRequested
from shared.kafka import Topics, publish_many
from shared.pipeline import Subscription


async def handle_batch(resources: Resources, batch: list[Event]) -> None:
    requests = [e for e in batch if isinstance(e, RegistrationRequested)]
    signals = [e for e in batch if isinstance(e, DeviceSignal)]
    if signals:
        await handlers.apply_signals(resources.pool, signals)
    if not requests:
        return
    decisions = await handlers.decide_batch(resources.pool, resources.keyring, requests, resources.limits)
    await publish_many(
        resources.producer, resources.topics, [*decisions.decided, *decisions.refused, *decisions.hooks]
    )


def _topics(topics: Topics) -> list[str]:
    return [topics.registration_requested, topics.device_signals]


SUBSCRIPTION = Subscription(topics=_topics, handle=handle_batch)
