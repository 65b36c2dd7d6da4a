"""Poison isolation on the real broker and database (shared.kafka.BatchConsumer with the
pipeline's transient errors): a record that decodes but makes the handler's query fail
fails its batch's transaction; the batch is handled again record by record; the record
is dead-lettered with its reason (never the driver's message) and position; every other
record of every partition is written exactly once and the group commits past it all."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.db.pool import BATCH_RETRY_ERRORS, Pool
from shared.events import DeviceSignal, Event
from shared.kafka import BatchConsumer, Topics, ensure_topics, make_consumer, send_records
from shared.settings import KafkaSettings
from tests.support.kafka import running_producer

N = 60


async def test_a_record_the_database_refuses_is_dead_lettered_and_the_rest_written_once(
    kafka_settings: KafkaSettings, unique: str, pool: Pool
) -> None:
    topics = Topics(kafka_settings.topic_prefix)
    await ensure_topics(kafka_settings, [topics.device_signals, topics.dead_letter])
    table = f"poison_{unique}"
    poison_id = str(uuid.uuid4())
    # The poison is a valid event the registry refuses (a constraint), as a handler's query
    # fails on a value no decode rule knows about; it fails the batch's one transaction.
    await pool.execute(
        f"CREATE TABLE {table} (device_id uuid PRIMARY KEY CHECK (device_id <> '{poison_id}'), at float8)"
    )
    signals = [
        DeviceSignal(device_id=str(uuid.uuid4()), kind="heartbeat", at=1_765_000_000.0 + i) for i in range(N)
    ]
    signals.insert(N // 2, DeviceSignal(device_id=poison_id, kind="heartbeat", at=1_765_000_000.0))
    batches: list[int] = []

    async def handler(batch: list[Event]) -> None:
        batches.append(len(batch))
        rows = [(e.device_id, e.at) for e in batch if isinstance(e, DeviceSignal)]
        async with pool.acquire() as conn, conn.transaction():
            # No ON CONFLICT: a record written twice would fail here, not hide.
            await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2)", rows)

    try:
        async with running_producer(kafka_settings) as producer:
            # One key: the poison sits in the middle of one partition, the rest follows it.
            await send_records(producer, [(topics.device_signals, "one-partition", s) for s in signals])
            raw = make_consumer(kafka_settings, [topics.device_signals], group_id=f"g-{unique}")
            await raw.start()
            consumer = BatchConsumer(
                raw,
                handler,
                dead_letter=(producer, topics.dead_letter),
                name="test",
                transient=BATCH_RETRY_ERRORS,
            )
            task = asyncio.create_task(consumer.run())
            try:
                async with asyncio.timeout(60):
                    while await pool.fetchval(f"SELECT count(*) FROM {table}") < N:
                        await asyncio.sleep(0.1)
                    while consumer.dead_lettered < 1:
                        await asyncio.sleep(0.05)
            finally:
                consumer.stop()
                await task
                await raw.stop()
        assert consumer.healthy and consumer.dead_lettered == 1
        assert max(batches) > 1 and 1 in batches  # a batch failed, then its records went one by one
        stored = await pool.fetch(f"SELECT device_id::text AS d FROM {table}")
        assert sorted(r["d"] for r in stored) == sorted(
            s.device_id for s in signals if s.device_id != poison_id
        )
    finally:
        await pool.execute(f"DROP TABLE {table}")

    dead = make_consumer(kafka_settings, [topics.dead_letter], group_id=f"d-{unique}")
    await dead.start()
    try:
        fetched = await dead.getmany(timeout_ms=10_000)
    finally:
        await dead.stop()
    [record] = [r for rs in fetched.values() for r in rs]
    headers = {k: v.decode() for k, v in record.headers}
    assert headers["fleetreg.stage"] == "handle"
    assert headers["fleetreg.error_type"] == "asyncpg.exceptions.CheckViolationError"
    assert headers["fleetreg.error"].startswith("asyncpg.exceptions.CheckViolationError")
    assert table not in headers["fleetreg.error"] and poison_id not in headers["fleetreg.error"]
    assert headers["fleetreg.topic"] == topics.device_signals
    partition, offset = int(headers["fleetreg.partition"]), int(headers["fleetreg.offset"])
    assert headers["fleetreg.source"] == f"{topics.device_signals}/{partition}/{offset}"

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap_servers)
    await admin.start()
    try:
        tp = TopicPartition(topics.device_signals, partition)
        committed = (await admin.list_consumer_group_offsets(f"g-{unique}", partitions=[tp]))[tp].offset
    finally:
        await admin.close()
    assert committed == offset + N // 2 + 1  # past the poison and everything after it
