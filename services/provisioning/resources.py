"""What provisioning's batch handler uses, opened and closed in one place."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

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


RESOURCES = web.AppKey("resources", Resources)


def resources_context(settings: PipelineSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            topics, pool, producer = await open_registry_and_broker(stack, settings.database, settings.kafka)
            app[RESOURCES] = Resources(pool, producer, topics, Keyring(settings.secret_key.reveal().encode()))
            yield

    return context
