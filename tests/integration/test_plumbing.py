"""The plumbing every service relies on, on the real broker and database:
events sent through the shared helpers reach each consumer group exactly once,
and a consumer that dies before committing loses nothing and duplicates nothing."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import OutOfOrderSequenceNumber

from shared.db.pool import Pool
from shared.events import DeviceSignal, Event
from shared.kafka import (
    BatchConsumer,
    Topics,
    ensure_topics,
    make_consumer,
    make_producer,
    send_records,
)
from shared.metrics import PRODUCER_REPLACED
from shared.settings import KafkaSettings
from tests.support.kafka import running_producer

N_EVENTS = 300


def _signals(n: int) -> list[DeviceSignal]:
    # Times of this century: decoding checks them (shared.events.TIME_RANGE).
    return [
        DeviceSignal(device_id=str(uuid.uuid4()), kind="heartbeat", at=1_765_000_000.0 + i) for i in range(n)
    ]


def _at(event: Event) -> float:
    assert isinstance(event, DeviceSignal)
    return event.at


async def _produce(settings: KafkaSettings, topic: str, events: list[DeviceSignal]) -> None:
    await ensure_topics(settings, [topic])
    async with running_producer(settings) as producer:
        await send_records(producer, [(topic, e.device_id, e) for e in events])


async def _consume_until(consumer: BatchConsumer, seen: list[Event], count: int) -> None:
    task = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(60):
            while len(seen) < count:
                await asyncio.sleep(0.05)
        # Give a wrongly duplicated delivery the chance to show up.
        await asyncio.sleep(0.5)
    finally:
        consumer.stop()
        await task


async def test_each_consumer_group_gets_every_event_exactly_once(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    topic = Topics(kafka_settings.topic_prefix).device_signals
    events = _signals(N_EVENTS)
    await _produce(kafka_settings, topic, events)

    async def handle_into(seen: list[Event]) -> BatchConsumer:
        async def handler(batch: list[Event]) -> None:
            seen.extend(batch)

        raw = make_consumer(kafka_settings, [topic], group_id=f"g-{unique}-{len(groups)}")
        await raw.start()
        groups.append(raw)
        return BatchConsumer(raw, handler, max_records=50)

    groups: list[AIOKafkaConsumer] = []
    seen_a: list[Event] = []
    seen_b: list[Event] = []
    consumer_a = await handle_into(seen_a)
    consumer_b = await handle_into(seen_b)
    try:
        await asyncio.gather(
            _consume_until(consumer_a, seen_a, N_EVENTS), _consume_until(consumer_b, seen_b, N_EVENTS)
        )
    finally:
        for raw in groups:
            await raw.stop()

    for seen in (seen_a, seen_b):
        assert sorted(seen, key=_at) == events


async def test_two_members_of_one_group_share_the_work_without_overlap(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    topic = Topics(kafka_settings.topic_prefix).device_signals
    events = _signals(N_EVENTS)
    seen: list[Event] = []

    async def handler(batch: list[Event]) -> None:
        seen.extend(batch)

    await ensure_topics(kafka_settings, [topic])
    raws = [make_consumer(kafka_settings, [topic], group_id=f"g-{unique}") for _ in range(2)]
    for raw in raws:
        await raw.start()
    consumers = [BatchConsumer(raw, handler, max_records=20) for raw in raws]
    tasks = [asyncio.create_task(c.run()) for c in consumers]
    try:
        # Both members have joined before anything is produced.
        async with asyncio.timeout(30):
            while not all(raw.assignment() for raw in raws):
                await asyncio.sleep(0.1)
        await _produce(kafka_settings, topic, events)
        async with asyncio.timeout(60):
            while len(seen) < N_EVENTS:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
    finally:
        for consumer in consumers:
            consumer.stop()
        await asyncio.gather(*tasks)
        for raw in raws:
            await raw.stop()

    assert sorted(seen, key=_at) == events
    assert all(c.batches_handled > 0 for c in consumers), "one member got no partition"


async def test_a_consumer_killed_before_commit_loses_and_duplicates_nothing(
    kafka_settings: KafkaSettings, unique: str, pool: Pool
) -> None:
    """The handler writes each event with its processed-message record in one
    transaction; offsets are committed after it. A consumer that dies between
    the database commit and the offset commit makes Kafka redeliver, and the
    redelivery changes nothing."""
    topic = Topics(kafka_settings.topic_prefix).device_signals
    table = f"plumbing_{unique}"
    await pool.execute(f"CREATE TABLE {table} (device_id uuid PRIMARY KEY, at float8 NOT NULL)")
    events = _signals(N_EVENTS)
    await _produce(kafka_settings, topic, events)
    deliveries = 0

    async def handler(batch: list[Event]) -> None:
        nonlocal deliveries
        deliveries += len(batch)
        rows = [(e.device_id, e.at) for e in batch if isinstance(e, DeviceSignal)]
        async with pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                f"INSERT INTO {table} VALUES ($1, $2) ON CONFLICT (device_id) DO NOTHING", rows
            )

    handled_batches = 0
    hang = asyncio.Event()

    async def dying_handler(batch: list[Event]) -> None:
        nonlocal handled_batches
        await handler(batch)  # the database commit happens...
        handled_batches += 1
        if handled_batches == 3:
            await hang.wait()  # ...and the process is killed before the offset commit

    group = f"g-{unique}"
    first = make_consumer(kafka_settings, [topic], group_id=group)
    await first.start()
    task = asyncio.create_task(BatchConsumer(first, dying_handler, max_records=40).run())
    try:
        async with asyncio.timeout(60):
            while handled_batches < 3:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await first.stop()
    stored_after_crash = await pool.fetchval(f"SELECT count(*) FROM {table}")
    assert 0 < stored_after_crash < N_EVENTS

    second = make_consumer(kafka_settings, [topic], group_id=group)
    await second.start()
    consumer = BatchConsumer(second, handler, max_records=40)
    task = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(60):
            while await pool.fetchval(f"SELECT count(*) FROM {table}") < N_EVENTS:
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
    finally:
        consumer.stop()
        await task
        await second.stop()

    rows = await pool.fetch(f"SELECT device_id::text AS d, at FROM {table} ORDER BY at")
    assert [(r["d"], r["at"]) for r in rows] == [(e.device_id, e.at) for e in events]
    # The crashed batch was delivered again: that is the redelivery the record absorbed.
    assert deliveries > N_EVENTS


async def test_an_undecodable_record_goes_to_the_dead_letter_topic(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    topics = Topics(kafka_settings.topic_prefix)
    await ensure_topics(kafka_settings, [topics.device_signals, topics.dead_letter])
    good = _signals(1)[0]
    seen: list[Event] = []

    async def handler(batch: list[Event]) -> None:
        seen.extend(batch)

    async with running_producer(kafka_settings) as producer:
        await producer.send_and_wait(topics.device_signals, b'{"type":"device.signal","v":99}', key=b"k")
        await send_records(producer, [(topics.device_signals, "k", good)])
        raw = make_consumer(kafka_settings, [topics.device_signals], group_id=f"g-{unique}")
        await raw.start()
        consumer = BatchConsumer(raw, handler, dead_letter=(producer, topics.dead_letter))
        try:
            await _consume_until(consumer, seen, 1)
        finally:
            await raw.stop()
    assert seen == [good]

    dead = make_consumer(kafka_settings, [topics.dead_letter], group_id=f"d-{unique}")
    await dead.start()
    try:
        batch = await dead.getmany(timeout_ms=10_000)
    finally:
        await dead.stop()
    records = [r for rs in batch.values() for r in rs]
    assert len(records) == 1
    headers = dict(records[0].headers)
    assert b"unknown schema version 99" in headers["fleetreg.error"]
    assert records[0].value == b'{"type":"device.signal","v":99}'


async def test_a_failing_handler_gets_the_batch_again_and_nothing_is_committed_before(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    """A database that is down for a while: the batch is handed back and retried."""
    topic = Topics(kafka_settings.topic_prefix).device_signals
    events = _signals(10)
    await _produce(kafka_settings, topic, events)
    attempts = 0
    seen: list[Event] = []

    async def flaky(batch: list[Event]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:
            raise ConnectionError("database restarting")
        seen.extend(batch)

    raw = make_consumer(kafka_settings, [topic], group_id=f"g-{unique}")
    await raw.start()
    consumer = BatchConsumer(raw, flaky)
    try:
        await _consume_until(consumer, seen, len(events))
    finally:
        await raw.stop()
    assert sorted(seen, key=_at) == events
    assert attempts >= 3
    assert consumer.healthy


def _desynchronise(producer: AIOKafkaProducer, topic: str, partitions: set[int]) -> None:
    """Make the broker reject the producer's next batches as out of order: the fault a
    broker restart under load caused (its idempotence state and the producer's disagree).
    The broker's refusal is real; only the client's sequence numbers are skewed to get it."""
    for partition in partitions:
        producer._txn_manager.increment_sequence_number(TopicPartition(topic, partition), 7)  # type: ignore[attr-defined]


async def test_a_producer_whose_idempotence_broke_is_replaced_and_sends_again(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    topic = f"{kafka_settings.topic_prefix}.producer-fault-{unique}"
    await ensure_topics(kafka_settings, [topic])
    signal = _signals(1)[0]
    # Without the replacement the fault is permanent: aiokafka's producer never sends again.
    bare = make_producer(kafka_settings)
    await bare.start()
    try:
        await bare.send_and_wait(topic, b"first", key=b"k")
        _desynchronise(bare, topic, await bare.partitions_for(topic))
        for _ in range(2):
            with pytest.raises(OutOfOrderSequenceNumber):
                await bare.send_and_wait(topic, b"lost", key=b"k")
    finally:
        await bare.stop()
    replaced_before = PRODUCER_REPLACED._value.get()

    async with running_producer(kafka_settings) as producer:
        await send_records(producer, [(topic, "k", signal)])
        _desynchronise(producer._inner, topic, await producer.partitions_for(topic))
        await send_records(producer, [(topic, "k", signal)])  # replaced, then sent
        await send_records(producer, [(topic, "k", signal)])  # and it keeps working

    assert PRODUCER_REPLACED._value.get() == replaced_before + 1
    consumer = make_consumer(kafka_settings, [topic], group_id=f"check-{unique}")
    await consumer.start()
    try:
        received: list[bytes] = []
        async with asyncio.timeout(30):
            while len(received) < 4:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    received.extend(r.value for r in records)
    finally:
        await consumer.stop()
    assert received[0] == b"first" and len(received) == 4  # bare's first, then the three sends
