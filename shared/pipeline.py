"""The resources of a Kafka-consuming service, opened and closed in one place.

A pipeline service is an aiohttp app (for /healthz, /readyz, /metrics) whose
cleanup context opens the database pool and the producer, creates the topics,
starts a :class:`BatchConsumer` task, and on shutdown stops the consumer after
its batch in hand is handled and committed, then closes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web
from aiokafka import AIOKafkaProducer

from shared.db.pool import Pool, answers, open_pool
from shared.domain.credentials import Keyring
from shared.events import Event
from shared.http import READINESS, READINESS_PROBE
from shared.kafka import BatchConsumer, Topics, ensure_topics, make_consumer, make_producer
from shared.metrics import BATCHES
from shared.settings import DatabaseSettings, KafkaSettings, PipelineSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pipeline:
    """What a pipeline handler may use; handed over by the wiring."""

    pool: Pool
    producer: AIOKafkaProducer
    topics: Topics
    keyring: Keyring


HandlerFactory = Callable[[Pipeline], Callable[[list[Event]], Awaitable[None]]]
PIPELINE = web.AppKey("pipeline", Pipeline)


async def open_registry_and_broker(
    stack: contextlib.AsyncExitStack, database: DatabaseSettings, kafka: KafkaSettings
) -> tuple[Topics, Pool, AIOKafkaProducer]:
    """What every service that talks to the registry and the broker opens first: the
    topics (created if missing), the pool and a producer, closed by ``stack``."""
    topics = Topics(kafka.topic_prefix)
    await ensure_topics(kafka, topics.all())
    pool = await open_pool(database)
    stack.push_async_callback(pool.close)
    producer = make_producer(kafka)
    await producer.start()
    stack.push_async_callback(producer.stop)
    return topics, pool, producer


def consumer_context(
    service: str,
    settings: PipelineSettings,
    subscribe: Callable[[Topics], Sequence[str]],
    factory: HandlerFactory,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            topics, pool, producer = await open_registry_and_broker(stack, settings.database, settings.kafka)
            pipeline = Pipeline(pool, producer, topics, Keyring(settings.secret_key.reveal().encode()))
            app[PIPELINE] = pipeline
            consumer = make_consumer(
                settings.kafka, subscribe(topics), settings.group_id, max_poll_records=settings.batch_size
            )
            await consumer.start()
            stack.push_async_callback(consumer.stop)
            handler = factory(pipeline)

            async def counted(batch: list[Event]) -> None:
                await handler(batch)
                BATCHES.labels(service).inc()

            loop = BatchConsumer(
                consumer,
                counted,
                dead_letter=(producer, topics.dead_letter),
                max_records=settings.batch_size,
                name=service,
            )
            task = asyncio.create_task(loop.run(), name=f"{service}-consumer")
            app[READINESS]["consumer"] = True
            app[READINESS_PROBE] = lambda: _consumer_and_database_ok(loop, task, pool)
            log.info("consuming", extra={"group": settings.group_id, "topics": list(subscribe(topics))})
            try:
                yield
            finally:
                app[READINESS]["consumer"] = False
                loop.stop()
                try:
                    await asyncio.wait_for(task, timeout=30)
                except TimeoutError:
                    log.warning("consumer did not finish its batch in 30 s; it will be redelivered")

    return context


async def _consumer_and_database_ok(loop: BatchConsumer, task: asyncio.Task[None], pool: Pool) -> bool:
    """Ready while the consume loop runs, its handler is not failing, and the database answers."""
    if task.done() or not loop.healthy:
        return False
    return await answers(pool)
