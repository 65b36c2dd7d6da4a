"""Provisioning's wiring: decided registrations in, ready outcomes out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from services.provisioning import handlers
from shared.events import Event, RegistrationDecided
from shared.kafka import Topics, publish_many
from shared.pipeline import Pipeline


def subscriptions(topics: Topics) -> Sequence[str]:
    return [topics.registration_decided]


def batch_handler(pipeline: Pipeline) -> Callable[[list[Event]], Awaitable[None]]:
    async def handle(batch: list[Event]) -> None:
        decided = [e for e in batch if isinstance(e, RegistrationDecided)]
        if not decided:
            return
        outcomes = await handlers.provision_batch(pipeline.pool, pipeline.keyring, decided)
        await publish_many(
            pipeline.producer, [(pipeline.topics.registration_outcomes, o.request_id, o) for o in outcomes]
        )

    return handle
