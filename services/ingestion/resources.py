"""What the ingestion service's routes and batch handler use, opened and closed in one place."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from services.ingestion import handlers
from services.ingestion.settings import BulkLimits, HookOptions, IngestionSettings, UploadBounds
from services.ingestion.uploads import UploadGate
from shared.db.pool import Pool
from shared.domain.credentials import Keyring
from shared.hook_caller import HookCaller
from shared.kafka import Producer, Topics
from shared.pipeline import open_registry_and_broker
from shared.settings import Secret
from shared.throttle import THROTTLE, open_throttle

SERVICE = "ingestion"


@dataclass(frozen=True)
class Resources:
    pool: Pool
    producer: Producer
    topics: Topics
    keyring: Keyring
    limits: BulkLimits
    bounds: UploadBounds
    gate: UploadGate
    secret_key: Secret  # FLEETREG_SECRET_KEY: seals a registration hook's signing secret
    hooks: HookOptions
    # A bulk registration's hook's test calls (handlers.try_hook): the notifier's caller,
    # with its address checks under FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS as this service
    # reads it (the operator API has its own for auto registrations).
    hook_caller: HookCaller


RESOURCES = web.AppKey("resources", Resources)


def resources_context(settings: IngestionSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        pipeline = settings.pipeline
        async with contextlib.AsyncExitStack() as stack:
            topics, pool, producer = await open_registry_and_broker(stack, pipeline.database, pipeline.kafka)
            await handlers.discard_abandoned_uploads(pool, settings.limits.stale_upload_seconds)
            app[THROTTLE] = await open_throttle(
                stack, settings.throttle, SERVICE, pool, pipeline.database.url.reveal()
            )
            keyring = Keyring(pipeline.secret_key.reveal().encode())
            hook_caller = HookCaller(allow_private=settings.hooks.allow_private)
            await hook_caller.open()
            stack.push_async_callback(hook_caller.close)
            app[RESOURCES] = Resources(
                pool,
                producer,
                topics,
                keyring,
                settings.limits,
                settings.bounds,
                UploadGate(settings.bounds),
                pipeline.secret_key,
                settings.hooks,
                hook_caller,
            )
            yield

    return context
