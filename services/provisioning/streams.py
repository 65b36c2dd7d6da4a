"""Provisioning's subscription: decided registrations in, ready outcomes out."""

from __future__ import annotations

from services.provisioning import handlers
from services.provisioning.resources import Resources
from shared.events import Event, RegistrationDecided
from shared.kafka import Topics, publish_many
from shared.pipeline import Subscription


async def handle_batch(resources: Resources, batch: list[Event]) -> None:
    decided = [e for e in batch if isinstance(e, RegistrationDecided)]
    if not decided:
        return
    outcomes = await handlers.provision_batch(resources.pool, resources.keyring, decided)
    await publish_many(resources.producer, resources.topics, outcomes)


def _topics(topics: Topics) -> list[str]:
    return [topics.registration_decided]


SUBSCRIPTION = Subscription(topics=_topics, handle=handle_batch)
