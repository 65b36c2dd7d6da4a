"""The intake's outcome listener (services/intake/outcomes.py) against a fake consumer: it
survives any record, starts reading again when a read fails, and says so to readiness."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from services.intake import outcomes
from services.intake.outcomes import OutcomeWaiter
from shared.events import RegistrationOutcome, encode

TOPIC = "t.registration.outcomes"
TP = TopicPartition(TOPIC, 0)
REQUEST = "0190f4a2-7c1e-7000-8000-00000000000a"
READY = RegistrationOutcome(request_id=REQUEST, status="ready")


def _record(offset: int, key: bytes | None, value: bytes) -> Any:
    return SimpleNamespace(topic=TOPIC, partition=0, offset=offset, key=key, value=value)


class FakeConsumer:
    """Each getmany hands out the next item: a batch of records, or an exception to raise."""

    def __init__(self, script: list[list[Any] | BaseException]) -> None:
        self.script = script
        self.reads = 0

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def assign(self, partitions: list[TopicPartition]) -> None: ...

    async def seek_to_end(self, *partitions: TopicPartition) -> None: ...

    async def position(self, tp: TopicPartition) -> int:
        return 0

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
        self.reads += 1
        if not self.script:
            await asyncio.sleep(0.01)
            return {}
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return {TP: item}


async def test_bad_keys_bad_values_and_other_types_are_skipped_and_the_next_outcome_is_delivered() -> None:
    waiting_key = REQUEST.encode()
    consumer = FakeConsumer(
        [
            [
                _record(0, b"\xff\xfe\x00", encode(READY)),  # a key that is not UTF-8
                _record(1, waiting_key, b"\xff not json"),
                _record(
                    2, waiting_key, b'{"type":"registration.outcome","v":1,"request_id":"x","status":"ready"}'
                ),
                _record(3, waiting_key, b'{"type":"device.signal","v":1}'),
                _record(4, None, encode(READY)),
            ],
            [_record(5, waiting_key, encode(READY))],
        ]
    )
    waiter = OutcomeWaiter(consumer, TOPIC)  # type: ignore[arg-type]  # a fake of the consumer calls the waiter makes
    future = waiter.expect(REQUEST)
    await waiter.start({0})
    try:
        # The waiting request's bad records are skipped; the good one after them answers it.
        assert await asyncio.wait_for(future, timeout=5) == READY
        assert waiter.healthy
        assert waiter.skipped == 4
    finally:
        await waiter.stop()


async def test_a_failed_read_restarts_the_listener_and_readiness_follows(monkeypatch: Any) -> None:
    monkeypatch.setattr(outcomes, "RESTART_DELAYS_S", (0.05, 0.1))
    health: list[bool] = []
    consumer = FakeConsumer([KafkaConnectionError("gone"), RuntimeError("anything"), [], []])
    waiter = OutcomeWaiter(consumer, TOPIC, on_health=health.append)  # type: ignore[arg-type]  # a fake consumer, as above
    await waiter.start({0})
    try:
        async with asyncio.timeout(5):
            while waiter.restarts < 2 or not waiter.healthy:
                await asyncio.sleep(0.01)
        assert health[0] is True and False in health and health[-1] is True
        future = waiter.expect(REQUEST)
        consumer.script.append([_record(9, REQUEST.encode(), encode(READY))])
        assert await asyncio.wait_for(future, timeout=5) == READY
    finally:
        await waiter.stop()
    assert health[-1] is False  # stopped: not ready
    assert not waiter.running
