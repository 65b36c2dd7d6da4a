"""What deduplication's batch handler uses, opened and closed in one place."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from services.dedup.handlers import Policy
from shared.db.pool import Pool
from shared.domain.credentials import Keyring
from shared.kafka import Producer, Topics
from shared.pipeline import open_registry_and_broker
from shared.settings import PipelineSettings


@dataclass(frozen=True)
class Resources:
    pool: Pool
    producer: Producer
    topics: Topics
    keyring: Keyring
    policy: Policy


RESOURCES = web.AppKey("resources", Resources)


def policy_of(settings: PipelineSettings) -> Policy:
    return Policy(
        alert_threshold=settings.max_failed_claims,
        alert_window_s=settings.failed_claims_window_s,
        clone_limit=settings.clone_limit,
        clone_window_s=settings.clone_window_s,
        clone_rate=settings.clone_rate_per_source,
        clone_rate_window_s=settings.clone_rate_window_s,
    )


def resources_context(settings: PipelineSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            topics, pool, producer = await open_registry_and_broker(stack, settings.database, settings.kafka)
            keyring = Keyring(settings.secret_key.reveal().encode())
            app[RESOURCES] = Resources(pool, producer, topics, keyring, policy_of(settings))
            yield

    return context
