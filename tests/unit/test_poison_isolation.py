"""The consume loop's poison isolation (shared.kafka.BatchConsumer), against a fake consumer
and a fake handler: a batch that fails for a reason that is not transient is handled
record by record, the record that fails alone is dead-lettered with its reason and
position, every other record is handled once more at most, and offsets are committed
after; a transient failure hands the whole batch back instead."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from shared.events import DeviceSignal, Event, encode
from shared.kafka import DEAD_LETTER_HEADERS, BatchConsumer

TOPIC = "t.device.signals"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
AT = 1_765_000_000.0


def _signal(n: int) -> DeviceSignal:
    return DeviceSignal(device_id=f"00000000-0000-4000-8000-{n:012d}", kind="heartbeat", at=AT + n)


def _record(tp: TopicPartition, offset: int, value: bytes) -> Any:
    return SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=offset, key=b"k", value=value)


class FakeConsumer:
    """Hands out ``batches`` in turn (a sought-back batch is handed out again), then stops the loop."""

    def __init__(self, batches: list[dict[TopicPartition, list[Any]]]) -> None:
        self.batches = batches
        self.sought: list[dict[TopicPartition, int]] = []
        self.committed: list[dict[TopicPartition, int]] = []
        self.loop: BatchConsumer | None = None
        self._pending_seek: dict[TopicPartition, int] = {}
        self._last: dict[TopicPartition, list[Any]] = {}

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
        if self._pending_seek:
            # Fetch again from the sought positions, as the real consumer does.
            batch = {
                tp: [r for r in self._last.get(tp, []) if r.offset >= at]
                for tp, at in self._pending_seek.items()
            }
            self._pending_seek = {}
            batch = {tp: records for tp, records in batch.items() if records}
            if batch:
                self._last = batch
                return batch
        if self.batches:
            self._last = self.batches.pop(0)
            return self._last
        assert self.loop is not None
        self.loop.stop()
        return {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._pending_seek[tp] = offset
        self.sought.append({tp: offset})

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.append(dict(offsets))

    def highwater(self, tp: TopicPartition) -> int | None:
        return None


class FakeProducer:
    def __init__(self, fail_first: int = 0) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, dict[str, str]]] = []
        self._fail = fail_first

    async def send_and_wait(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        if self._fail:
            self._fail -= 1
            raise KafkaConnectionError("broker gone")
        self.sent.append((topic, key, value, {k: v.decode() for k, v in headers or []}))


POISON = _signal(666)


class Handler:
    """Applies events; fails on a batch holding POISON (as a query fails on a bad value),
    and with ``transient`` errors first if told to."""

    def __init__(self, transient: list[BaseException] | None = None) -> None:
        self.applied: list[Event] = []
        self.calls: list[int] = []
        self._transient = transient or []

    async def __call__(self, batch: list[Event]) -> None:
        self.calls.append(len(batch))
        if self._transient:
            raise self._transient.pop(0)
        if POISON in batch:
            raise ValueError("invalid input for query argument $1: 'the secret value'")
        self.applied.extend(batch)


async def _run(consumer: FakeConsumer, handler: Handler, producer: FakeProducer) -> BatchConsumer:
    # Fakes of the consumer and producer calls the loop makes (the broker's own run is
    # tests/integration/test_poison_batches.py).
    loop = BatchConsumer(consumer, handler, dead_letter=(producer, "t.deadletter"), name="dedup")  # type: ignore[arg-type]
    consumer.loop = loop
    await asyncio.wait_for(loop.run(), timeout=20)
    return loop


async def test_a_record_its_handler_fails_on_is_dead_lettered_and_every_other_record_is_handled() -> None:
    p0 = [
        _record(P0, 10, encode(_signal(1))),
        _record(P0, 11, encode(POISON)),
        _record(P0, 12, encode(_signal(2))),
    ]
    p1 = [_record(P1, 40, encode(_signal(3))), _record(P1, 41, encode(_signal(4)))]
    consumer, handler, producer = FakeConsumer([{P0: p0, P1: p1}]), Handler(), FakeProducer()

    loop = await _run(consumer, handler, producer)

    assert handler.applied == [_signal(1), _signal(2), _signal(3), _signal(4)]  # in order per partition
    assert handler.calls == [5, 1, 1, 1, 1, 1]  # the batch, then each record alone
    [(topic, key, value, headers)] = producer.sent
    assert (topic, key, value) == ("t.deadletter", b"k", encode(POISON))
    assert list(headers) == list(DEAD_LETTER_HEADERS)
    assert headers["fleetreg.stage"] == "handle"
    assert headers["fleetreg.error_type"] == "builtins.ValueError"
    assert headers["fleetreg.error"].startswith("builtins.ValueError at tests/unit/test_poison_isolation.py:")
    assert "secret" not in headers["fleetreg.error"]  # never the exception's message
    assert headers["fleetreg.consumer"] == "dedup"
    assert (headers["fleetreg.source"], headers["fleetreg.topic"]) == (f"{TOPIC}/0/11", TOPIC)
    assert (headers["fleetreg.partition"], headers["fleetreg.offset"]) == ("0", "11")
    assert consumer.committed == [{P0: 13, P1: 42}]
    assert consumer.sought == []  # nothing handed back: the partition moved on
    assert loop.healthy and loop.dead_lettered == 1


async def test_a_record_no_schema_takes_is_dead_lettered_at_decode_with_the_rule_it_breaks() -> None:
    bad = b'{"type":"device.signal","v":1,"device_id":"d","kind":"ready","at":1e308}'
    consumer = FakeConsumer([{P0: [_record(P0, 0, bad), _record(P0, 1, encode(_signal(1)))]}])
    handler, producer = Handler(), FakeProducer()

    await _run(consumer, handler, producer)

    [(_, _, value, headers)] = producer.sent
    assert value == bad
    assert headers["fleetreg.stage"] == "decode"
    assert headers["fleetreg.error"] == "device.signal: field 'device_id' must be a UUID"
    assert headers["fleetreg.error_type"] == "shared.events.SchemaError"
    assert handler.applied == [_signal(1)] and handler.calls == [1]
    assert consumer.committed == [{P0: 2}]


@pytest.mark.parametrize(
    "error", [ConnectionError("database restarting"), KafkaConnectionError("broker gone")]
)
async def test_a_transient_failure_hands_the_whole_batch_back_and_dead_letters_nothing(
    error: Exception,
) -> None:
    records = [_record(P0, 5, encode(_signal(1))), _record(P0, 6, encode(_signal(2)))]
    consumer, handler, producer = (
        FakeConsumer([{P0: records}]),
        Handler(transient=[error, error]),
        FakeProducer(),
    )

    loop = await _run(consumer, handler, producer)

    assert handler.calls == [2, 2, 2]  # the whole batch each time, never split
    assert consumer.sought == [{P0: 5}, {P0: 5}]
    assert producer.sent == []
    assert handler.applied == [_signal(1), _signal(2)]
    assert consumer.committed == [{P0: 7}]
    assert loop.healthy


@pytest.mark.parametrize("fails_on", [2, 3])
async def test_a_transient_failure_in_the_record_by_record_pass_commits_what_was_handled(
    fails_on: int,
) -> None:
    """The registry goes away half-way through the pass: records handled stay committed,
    the rest is fetched again from the record that met the failure."""
    p0 = [
        _record(P0, 0, encode(_signal(1))),
        _record(P0, 1, encode(POISON)),
        _record(P0, 2, encode(_signal(2))),
    ]
    p1 = [_record(P1, 7, encode(_signal(3)))]

    class GoesAway(Handler):
        async def __call__(self, batch: list[Event]) -> None:
            if batch == [_signal(fails_on)] and not getattr(self, "failed", False):
                self.failed = True
                raise ConnectionError("database restarting")
            await super().__call__(batch)

    consumer, handler, producer = FakeConsumer([{P0: p0, P1: p1}]), GoesAway(), FakeProducer()

    await _run(consumer, handler, producer)

    if fails_on == 2:  # in the middle of P0: P0 from signal 2 again, P1 whole
        assert consumer.committed[0] == {P0: 2}  # signal 1 and the poison, before the failure
        assert {P0: 2} in consumer.sought and {P1: 7} in consumer.sought
    else:  # on P1's first record: P0 was handled to its end
        assert consumer.committed[0] == {P0: 3}
        assert consumer.sought == [{P1: 7}]
    assert handler.applied == [_signal(1), _signal(2), _signal(3)]
    assert [h["fleetreg.offset"] for *_, h in producer.sent] == ["1"]  # dead-lettered once
    latest: dict[TopicPartition, int] = {}
    for offsets in consumer.committed:
        latest.update(offsets)
    assert latest == {P0: 3, P1: 8}


async def test_a_dead_letter_that_cannot_be_sent_is_retried_never_skipped() -> None:
    consumer = FakeConsumer([{P0: [_record(P0, 0, encode(POISON)), _record(P0, 1, encode(_signal(1)))]}])
    handler, producer = Handler(), FakeProducer(fail_first=1)

    await _run(consumer, handler, producer)

    assert [h["fleetreg.offset"] for *_, h in producer.sent] == ["0"]
    assert consumer.committed == [{P0: 2}]
    assert _signal(1) in handler.applied
