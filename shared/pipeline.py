"""The Kafka side of a service, declared one way everywhere.

A consuming service declares, in its ``streams.py``, one :class:`Subscription`: the
topics it reads and a top-level batch handler ``async def handle_batch(resources,
batch)``. Its ``resources.py`` opens what the handler uses (the registry pool, a
producer, ...) in a cleanup context and stores it under a typed ``web.AppKey``;
:func:`consumer_context`, appended after it, starts a :class:`BatchConsumer` that
hands every batch to the handler with those resources, and on shutdown stops after
the batch in hand is handled and committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from aiohttp import web

from shared.db.pool import BATCH_RETRY_ERRORS, Pool, answers, open_pool
from shared.events import Event
from shared.http import READINESS, READINESS_PROBE
from shared.kafka import BatchConsumer, Producer, Topics, ensure_topics, make_consumer
from shared.metrics import BATCHES, RECORDS
from shared.settings import DatabaseSettings, KafkaSettings, PipelineSettings

log = logging.getLogger(__name__)


class BrokerResources(Protocol):
    """What the consume loop itself needs of a service's resources."""

    @property
    def pool(self) -> Pool: ...

    @property
    def producer(self) -> Producer: ...

    @property
    def topics(self) -> Topics: ...


R = TypeVar("R", bound=BrokerResources)


@dataclass(frozen=True)
class Subscription(Generic[R]):
    """The topics a service consumes and its handler of one batch of their events.

    ``handle`` gets the service's resources and the decoded events of one poll (at most
    the batch size); it returns once everything the batch causes is written and sent,
    or raises: the batch is then retried whole if the error is transient (the registry
    or broker unreachable), or else handled again one event at a time, the events it
    fails on alone dead-lettered (see :class:`shared.kafka.BatchConsumer`). So it must be
    idempotent per event: an event of a batch that failed half-way may be handled again
    alone."""

    topics: Callable[[Topics], Sequence[str]]
    handle: Callable[[R, list[Event]], Awaitable[None]]


async def open_registry_and_broker(
    stack: contextlib.AsyncExitStack, database: DatabaseSettings, kafka: KafkaSettings
) -> tuple[Topics, Pool, Producer]:
    """What every service that talks to the registry and the broker opens first: the
    topics (created if missing), the pool and a producer, closed by ``stack``."""
    topics = Topics(kafka.topic_prefix)
    await ensure_topics(kafka, topics.all())
    pool = await open_pool(database)
    stack.push_async_callback(pool.close)
    producer = Producer(kafka)
    await producer.start()
    stack.push_async_callback(producer.stop)
    return topics, pool, producer


def consumer_context(
    service: str,
    settings: PipelineSettings,
    subscription: Subscription[R],
    key: web.AppKey[R],
    *,
    part: str = "",
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup context that runs ``subscription`` with the resources under ``key``
    (opened by a cleanup context appended before this one). ``part`` names a second
    subscription of one service (the notifier's registration hooks): its own consumer group
    (``<group>-<part>``), readiness part and loop name; the readiness probe checks every
    loop of the service."""
    group_id = f"{settings.group_id}-{part}" if part else settings.group_id
    name = f"{service}-{part}" if part else service
    ready_part = f"consumer_{part}" if part else "consumer"

    async def context(app: web.Application) -> AsyncIterator[None]:
        resources = app[key]
        topics = subscription.topics(resources.topics)
        async with contextlib.AsyncExitStack() as stack:
            consumer = make_consumer(settings.kafka, topics, group_id, max_poll_records=settings.batch_size)
            await consumer.start()
            stack.push_async_callback(consumer.stop)

            async def counted(batch: list[Event]) -> None:
                await subscription.handle(resources, batch)
                BATCHES.labels(service).inc()
                RECORDS.labels(service).inc(len(batch))

            loop = BatchConsumer(
                consumer,
                counted,
                dead_letter=(resources.producer, resources.topics.dead_letter),
                max_records=settings.batch_size,
                name=name,
                transient=BATCH_RETRY_ERRORS,
            )
            task = asyncio.create_task(loop.run(), name=f"{name}-consumer")
            app[READINESS][ready_part] = True
            earlier = app.get(READINESS_PROBE)

            async def probe() -> bool:
                if earlier is not None and not await earlier():
                    return False
                return await _consumer_and_database_ok(loop, task, resources.pool)

            app[READINESS_PROBE] = probe
            log.info("consuming", extra={"group": group_id, "topics": list(topics)})
            try:
                yield
            finally:
                app[READINESS][ready_part] = False
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
