"""What deduplication's batch handler uses, opened and closed in one place."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from services.dedup.settings import DedupSettings
from shared.db.pool import Pool
from shared.domain.credentials import Keyring
from shared.domain.dedup import Limits
from shared.kafka import Producer, Topics
from shared.pipeline import open_registry_and_broker


@dataclass(frozen=True)
class Resources:
    pool: Pool
    producer: Producer
    topics: Topics
    keyring: Keyring
    limits: Limits


RESOURCES = web.AppKey("resources", Resources)


def resources_context(settings: DedupSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            pipeline = settings.pipeline
            topics, pool, producer = await open_registry_and_broker(stack, pipeline.database, pipeline.kafka)
            keyring = Keyring(pipeline.secret_key.reveal().encode())
            app[RESOURCES] = Resources(pool, producer, topics, keyring, settings.limits)
            yield

    return context
