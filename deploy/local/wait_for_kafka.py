"""Wait until a Kafka broker accepts a produce and serves it back to a consumer.

Used by deploy/local/stack.sh: "the port is open" is not "clients can work".
Exit 0 when a round trip succeeded, 1 with one line on stderr otherwise.
The clients connect as the services do: TLS and SASL from the KAFKA_* variables of
the environment (shared.settings.KafkaSettings); the broker address is the argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from shared.kafka import connection_options
from shared.settings import Env, KafkaSettings, SettingsError

TOPIC = "_fleetreg_health"


async def round_trip(connection: dict[str, Any]) -> None:
    admin = AIOKafkaAdminClient(**connection, request_timeout_ms=5000)
    await admin.start()
    try:
        if TOPIC not in await admin.list_topics():
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    marker = uuid.uuid4().hex.encode()
    producer = AIOKafkaProducer(**connection, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = await producer.send_and_wait(TOPIC, marker)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(**connection, enable_auto_commit=False)
    await consumer.start()
    try:
        from aiokafka import TopicPartition

        tp = TopicPartition(TOPIC, sent.partition)
        consumer.assign([tp])
        consumer.seek(tp, sent.offset)
        batch = await consumer.getmany(tp, timeout_ms=5000)
        if not any(r.value == marker for r in batch.get(tp, [])):
            raise RuntimeError("produced record was not consumed back")
    finally:
        await consumer.stop()


async def main(bootstrap: str, wait_seconds: float) -> int:
    try:
        settings = KafkaSettings.from_env(Env({**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}))
    except SettingsError as exc:
        print(f"Kafka at {bootstrap}: configuration error: {exc}", file=sys.stderr)
        return 1
    connection = connection_options(settings)
    deadline = time.monotonic() + wait_seconds
    last_error = "no attempt made"
    while time.monotonic() < deadline:
        try:
            await asyncio.wait_for(round_trip(connection), timeout=15)
            return 0
        except (KafkaError, OSError, RuntimeError, TimeoutError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(1)
    print(
        f"Kafka at {bootstrap} did not complete a produce/consume round trip: {last_error}", file=sys.stderr
    )
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 60)))
