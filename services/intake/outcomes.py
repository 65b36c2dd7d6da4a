"""Waits for the outcome of a registration request published by this intake instance.

Every intake instance reads the whole outcomes topic from its end, without a
consumer group (each instance must see every outcome; only the one holding the
waiting request uses it). An outcome that arrives when nobody waits is simply
dropped: the device's next call reads it from the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.events import RegistrationOutcome, SchemaError, decode_as

log = logging.getLogger(__name__)


class OutcomeWaiter:
    def __init__(self, consumer: AIOKafkaConsumer, topic: str) -> None:
        self._consumer = consumer
        self._topic = topic
        self._waiting: dict[str, asyncio.Future[RegistrationOutcome]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self, partitions: set[int]) -> None:
        """Read every partition of the outcomes topic from its current end."""
        await self._consumer.start()
        assigned = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        self._consumer.assign(assigned)
        await self._consumer.seek_to_end(*assigned)
        # Resolve the end positions now, so nothing published after start() is skipped.
        for tp in assigned:
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run(), name="outcome-waiter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for future in self._waiting.values():
            future.cancel()
        await self._consumer.stop()

    def expect(self, request_id: str) -> asyncio.Future[RegistrationOutcome]:
        """Register interest before publishing the request, so a fast outcome is not missed."""
        future: asyncio.Future[RegistrationOutcome] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        return future

    def forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=500, max_records=2000)
            for records in batch.values():
                for record in records:
                    future = self._waiting.get(record.key.decode()) if record.key else None
                    if future is None or future.done():
                        continue
                    try:
                        future.set_result(decode_as(RegistrationOutcome, record.value))
                    except SchemaError as exc:
                        log.error("undecodable outcome", extra={"error": str(exc)})
