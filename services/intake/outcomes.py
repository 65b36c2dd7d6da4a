"""Waits for the outcome of a registration request published by this intake instance.

Every intake instance reads the whole outcomes topic from its end, without a
consumer group (each instance must see every outcome; only the one holding the
waiting request uses it). An outcome that arrives when nobody waits is simply
dropped: the device's next call reads it from the registry.

The listener survives any record: a key that is not a request ID in UTF-8, a value
that does not decode, an event of another type are counted
(``fleetreg_errors_total{service="intake",kind="outcome_skipped"}``) and skipped, with
a log line (at most one per kind of fault every few seconds: shared.logging
``RepeatedLines``). Nothing is dead-lettered here: every intake instance reads every
record, and the notifier, which reads the same topic in a group, dead-letters it once.
If reading itself fails, or the listening task ends for any other reason than
:meth:`OutcomeWaiter.stop`, the listener logs it and starts reading again after a pause
(0.5 s doubling to 10 s); until a read succeeds again, :attr:`OutcomeWaiter.healthy`
is False and ``on_health`` told so (the intake's readiness part ``outcome_waiter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.events import RegistrationOutcome, SchemaError, decode_as
from shared.logging import exception_summary
from shared.metrics import ERRORS

log = logging.getLogger(__name__)

# Pause before reading again after a failed read: doubles from the first to the last.
RESTART_DELAYS_S = (0.5, 10.0)


class OutcomeWaiter:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topic: str,
        on_health: Callable[[bool], None] | None = None,
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._waiting: dict[str, asyncio.Future[RegistrationOutcome]] = {}
        self._task: asyncio.Task[None] | None = None
        self._on_health = on_health or (lambda _: None)
        self._healthy = False
        self._stopping = False
        self._delay = RESTART_DELAYS_S[0]
        self.restarts = 0
        self.skipped = 0

    async def start(self, partitions: set[int]) -> None:
        """Read every partition of the outcomes topic from its current end."""
        await self._consumer.start()
        assigned = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        self._consumer.assign(assigned)
        await self._consumer.seek_to_end(*assigned)
        # Resolve the end positions now, so nothing published after start() is skipped.
        for tp in assigned:
            await self._consumer.position(tp)
        self._set_health(True)
        self._listen()

    def _listen(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outcome-waiter")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The listening task ended: unless stopped, start it again after a pause."""
        if self._stopping:
            return
        self._set_health(False)
        self.restarts += 1
        ERRORS.labels("intake", "outcome_listener_failed").inc()
        error = None if task.cancelled() else task.exception()
        log.error(
            "outcome listener ended; starting it again",
            extra={"error": exception_summary(error) if error else "cancelled", "retry_in_s": self._delay},
        )
        delay, self._delay = self._delay, min(self._delay * 2, RESTART_DELAYS_S[1])
        asyncio.get_running_loop().call_later(delay, self._restart)

    def _restart(self) -> None:
        if not self._stopping:
            self._listen()

    async def stop(self) -> None:
        self._stopping = True
        self._set_health(False)
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

    @property
    def healthy(self) -> bool:
        """Running, and its last read succeeded."""
        return self.running and self._healthy

    def _set_health(self, healthy: bool) -> None:
        if healthy != self._healthy:
            self._healthy = healthy
            self._on_health(healthy)

    async def _run(self) -> None:
        """Read until cancelled or a read fails (then :meth:`_ended` starts it again)."""
        while True:
            batch = await self._consumer.getmany(timeout_ms=500, max_records=2000)
            self._delay = RESTART_DELAYS_S[0]
            self._set_health(True)
            for records in batch.values():
                for record in records:
                    self._deliver(record)

    def _deliver(self, record: Any) -> None:
        """Hand one record to the request waiting for it, if any; never raises."""
        try:
            request_id = record.key.decode() if record.key is not None else None
        except UnicodeDecodeError:
            self._skip(record, "the key is not UTF-8")
            return
        future = self._waiting.get(request_id) if request_id else None
        if future is None or future.done():
            return
        try:
            future.set_result(decode_as(RegistrationOutcome, record.value))
        except SchemaError as exc:
            self._skip(record, str(exc))
        except Exception as exc:  # anything else a record can cause must not end the listener
            self._skip(record, exception_summary(exc))

    def _skip(self, record: Any, reason: str) -> None:
        self.skipped += 1
        ERRORS.labels("intake", "outcome_skipped").inc()
        log.error(
            "outcome record skipped",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "error": reason,
            },
        )
