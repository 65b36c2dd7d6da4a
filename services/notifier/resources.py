"""What the notifier's handlers use, opened and closed in one place."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web
from aiokafka import AIOKafkaProducer

from services.notifier.settings import DeliverySettings, NotifierSettings
from shared.db.pool import Pool
from shared.domain.webhooks import SecretBox
from shared.kafka import Topics
from shared.pipeline import open_registry_and_broker
from shared.webhook_sender import Sender


@dataclass(frozen=True)
class Resources:
    pool: Pool
    producer: AIOKafkaProducer  # the consume loop's dead letters
    topics: Topics
    secrets: SecretBox  # opens the webhooks' sealed signing secrets
    sender: Sender
    delivery: DeliverySettings


RESOURCES = web.AppKey("resources", Resources)


def resources_context(settings: NotifierSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            pipeline, delivery = settings.pipeline, settings.delivery
            topics, pool, producer = await open_registry_and_broker(stack, pipeline.database, pipeline.kafka)
            sender = Sender(
                allow_private=delivery.allow_private_urls,
                timeout_s=delivery.timeout_s,
                concurrency=delivery.concurrency,
            )
            await sender.open()
            stack.push_async_callback(sender.close)
            box = SecretBox(pipeline.secret_key.reveal().encode())
            app[RESOURCES] = Resources(pool, producer, topics, box, sender, delivery)
            yield

    return context
