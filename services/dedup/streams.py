"""Deduplication's wiring: which topics it reads and where its results go."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from services.dedup import handlers
from shared.events import DeviceSignal, Event, RegistrationRequested
from shared.kafka import Topics, publish_many
from shared.pipeline import Pipeline


def subscriptions(topics: Topics) -> Sequence[str]:
    return [topics.registration_requested, topics.device_signals]


def batch_handler(
    policy: handlers.Policy,
) -> Callable[[Pipeline], Callable[[list[Event]], Awaitable[None]]]:
    return lambda pipeline: _handler(pipeline, policy)


def _handler(pipeline: Pipeline, policy: handlers.Policy) -> Callable[[list[Event]], Awaitable[None]]:
    topics = pipeline.topics

    async def handle(batch: list[Event]) -> None:
        requests = [e for e in batch if isinstance(e, RegistrationRequested)]
        signals = [e for e in batch if isinstance(e, DeviceSignal)]
        if signals:
            await handlers.apply_signals(pipeline.pool, signals)
        if not requests:
            return
        decisions = await handlers.decide_batch(pipeline.pool, pipeline.keyring, requests, policy)
        await publish_many(
            pipeline.producer,
            [
                *[(topics.registration_decided, d.device_id, d) for d in decisions.decided],
                *[(topics.registration_outcomes, o.request_id, o) for o in decisions.refused],
            ],
        )

    return handle
