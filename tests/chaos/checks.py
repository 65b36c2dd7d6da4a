"""What a chaos run checks after each fault: the registry against what was acknowledged,
and a poison record's fate (dead-lettered with its reason, its partition not stuck)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.db.pool import Pool


async def storm_registry(
    pool: Pool, account_id: str, planned: int, acknowledged: dict[int, str], settle_s: float = 60
) -> dict[str, Any]:
    """The devices of one storm's account against what the devices were told.

    ``lost``: devices told they are provisioned that the registry does not hold as one
    provisioned device; ``duplicated``: devices beyond one per planned device, hardware
    IDs held twice (any case), and devices decided as new/clone more than once. A device's
    ``ready`` is recorded asynchronously: the registry is given ``settle_s`` to catch up."""
    deadline = time.monotonic() + settle_s
    while True:
        rows = await pool.fetch(
            "SELECT id::text AS id, lower(hardware_id) AS hw, lifecycle FROM devices WHERE account_id = $1",
            uuid.UUID(account_id),
        )
        by_id = {r["id"]: r for r in rows}
        lost = sum(
            1 for d in acknowledged.values() if d not in by_id or by_id[d]["lifecycle"] != "provisioned"
        )
        if lost == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    same_hw = len(rows) - len({r["hw"] for r in rows})
    created_twice = await pool.fetchval(
        """SELECT count(*) FROM (
             SELECT device_id FROM registration_decisions
             WHERE account_id = $1 AND decision IN ('new', 'clone') AND device_id IS NOT NULL
             GROUP BY device_id HAVING count(*) > 1) AS twice""",
        uuid.UUID(account_id),
    )
    extra = max(0, len(rows) - planned)
    provisioned = sum(1 for r in rows if r["lifecycle"] == "provisioned")
    return {
        "account_id": account_id,
        "extra_devices": extra,
        "hardware_ids_twice": same_hw,
        "devices_created_twice": int(created_twice or 0),
        "devices_in_registry": len(rows),
        "provisioned_in_registry": provisioned,
        "acknowledged": len(acknowledged),
        "lost": lost,
        "duplicated": extra + same_hw + int(created_twice or 0),
        "hardware_ids_unique": same_hw == 0,
    }


async def bulk_registry(pool: Pool, product_id: str, hardware_ids: list[str]) -> dict[str, Any]:
    """The devices of one bulk product against the rows published: each row one device."""
    rows = await pool.fetch(
        "SELECT lower(hardware_id) AS hw FROM devices WHERE product_id = $1", uuid.UUID(product_id)
    )
    held = [r["hw"] for r in rows]
    wanted = {h.lower() for h in hardware_ids}
    present = set(held)
    return {
        "devices_in_registry": len(held),
        "acknowledged": len(wanted),
        "lost": len(wanted - present),
        "duplicated": (len(held) - len(present)) + len(present - wanted),
        "hardware_ids_unique": len(held) == len(present),
    }


@dataclass(frozen=True)
class Poison:
    topic: str
    partition: int
    offset: int
    value: bytes


async def send_poison(bootstrap: str, topic: str, key: str | None = None) -> Poison:
    """One undecodable record (not JSON) on ``topic``, keyed ``key`` (random by default)."""
    value = b"\xff\xfe chaos-poison " + uuid.uuid4().hex.encode()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, value, key=(key or uuid.uuid4().hex).encode())
    finally:
        await producer.stop()
    return Poison(topic, meta.partition, meta.offset, value)


async def find_dead_letter(
    bootstrap: str, dead_letter_topic: str, poison: Poison, within_s: float = 60
) -> dict[str, Any] | None:
    """The dead-letter record of ``poison`` (with its reason header), or None in time."""
    consumer = AIOKafkaConsumer(
        dead_letter_topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=1000)
            for records in batch.values():
                for record in records:
                    if record.value == poison.value:
                        headers = {k: v.decode(errors="replace") for k, v in (record.headers or ())}
                        return {
                            "reason": headers.get("fleetreg.error", ""),
                            "source": headers.get("fleetreg.source", ""),
                        }
        return None
    finally:
        await consumer.stop()


async def committed_past(bootstrap: str, group: str, poison: Poison, within_s: float = 60) -> int | None:
    """Wait until ``group`` committed an offset past the record *after* the poison on its
    partition (so later records were processed); return the committed offset, or the last
    one seen (None: nothing committed) when the time is up."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    tp = TopicPartition(poison.topic, poison.partition)
    seen: int | None = None
    try:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            offsets = await admin.list_consumer_group_offsets(group, partitions=[tp])
            meta = offsets.get(tp)
            seen = int(meta.offset) if meta is not None and meta.offset >= 0 else None
            if seen is not None and seen >= poison.offset + 2:
                return seen
            await asyncio.sleep(0.5)
        return seen
    finally:
        await admin.close()
