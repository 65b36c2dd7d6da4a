"""Schema-valid poison: records of the right event type and JSON types whose values no
handler can take (a non-UUID ID, a time of 1e308, a NUL in a hardware ID, an integer
past 2^63, control characters in a text), one set per consumed topic, a record without
a value on each, and an outcome whose key is not UTF-8. Used by ``make chaos`` (the
``poison-schema`` fault) and by tests/e2e/test_poison_records.py.

Each record is sent to every partition of its topic, so every partition of every
consumer meets it before the records that follow; the checks then find each one in the
dead-letter topic, once per consumer group that reads its topic, with its reason and
its position in headers (docs/operations.md, "Reading the dead-letter topic").
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.kafka import Topics

# Which consumer groups read each consumed topic (services' streams.py), by service; the
# intake reads registration.outcomes too, without a group, and dead-letters nothing.
READERS: dict[str, tuple[str, ...]] = {
    "registration.requested": ("dedup",),
    "device.signals": ("dedup", "notifier"),
    "registration.decided": ("provisioning", "notifier"),
    "registration.outcomes": ("notifier",),
    "bulk.publish": ("ingestion", "notifier"),
}
PAST_INT64 = 2**63  # fits orjson's u64, past Postgres bigint
HUGE_TIME = 1e308


@dataclass(frozen=True)
class Kind:
    """One poison record: its topic (without prefix), what is wrong, the record, and the
    words the dead-letter reason must hold (None: no consumer group dead-letters it)."""

    topic: str
    what: str
    key: bytes
    value: bytes | None  # None: a tombstone (a record without a value)
    reason: str | None


@dataclass(frozen=True)
class Sent:
    kind: Kind
    topic: str
    partition: int
    offset: int

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


def _id() -> str:
    return str(uuid.uuid4())


def _record(event_type: str, valid: dict[str, Any], field: str, value: Any) -> bytes:
    return orjson.dumps({"type": event_type, "v": 1, **valid, field: value})


def catalogue() -> list[Kind]:
    """Every schema-valid-but-wrong record, one per (topic, fault); fresh IDs each call."""
    now = time.time()
    requested = {
        "request_id": _id(),
        "received_at": now,
        "bulk_identification_code": _id().upper(),
        "hardware_id": "poison-" + uuid.uuid4().hex[:8],
        "fingerprint": "",
    }
    signal = {"device_id": _id(), "kind": "heartbeat", "at": now}
    decided = {
        "request_id": _id(),
        "account_id": _id(),
        "product_id": _id(),
        "device_id": _id(),
        "hardware_id": "poison-" + uuid.uuid4().hex[:8],
        "decision": "new",
        "credential_generation": 1,
        "received_at": now,
    }
    outcome = {"request_id": _id(), "status": "refused", "reason": "poison", "account_id": _id()}
    publish = {"registration_id": _id(), "after_line": 0}
    published = {
        "registration_id": _id(),
        "account_id": _id(),
        "product_id": _id(),
        "published": 1,
        "conflicts": 0,
        "at": now,
    }
    faults: list[tuple[str, str, str, dict[str, Any], str, Any, str]] = [
        # (topic, what, type, a valid payload, the field made wrong, its value, the rule named)
        (
            "registration.requested",
            "non-UUID ID",
            "registration.requested",
            requested,
            "request_id",
            "x-1",
            "a UUID",
        ),
        (
            "registration.requested",
            "time 1e308",
            "registration.requested",
            requested,
            "received_at",
            HUGE_TIME,
            "Unix seconds",
        ),
        (
            "registration.requested",
            "NUL in hardware ID",
            "registration.requested",
            requested,
            "hardware_id",
            "b8\x00eb",
            "a hardware ID",
        ),
        (
            "registration.requested",
            "integer past 2^63",
            "registration.requested",
            requested,
            "received_at",
            PAST_INT64,
            "Unix seconds",
        ),
        (
            "registration.requested",
            "control character in a token",
            "registration.requested",
            requested,
            "idempotency_key",
            "k\x1b[2J",
            "printable ASCII",
        ),
        ("device.signals", "non-UUID ID", "device.signal", signal, "device_id", "x-1", "a UUID"),
        ("device.signals", "time 1e308", "device.signal", signal, "at", HUGE_TIME, "Unix seconds"),
        ("device.signals", "integer past 2^63", "device.signal", signal, "at", PAST_INT64, "Unix seconds"),
        ("device.signals", "NUL in a kind", "device.signal", signal, "kind", "ready\x00", "one of"),
        (
            "registration.decided",
            "non-UUID ID",
            "registration.decided",
            decided,
            "device_id",
            "x-1",
            "a UUID",
        ),
        (
            "registration.decided",
            "time 1e308",
            "registration.decided",
            decided,
            "received_at",
            HUGE_TIME,
            "Unix seconds",
        ),
        (
            "registration.decided",
            "NUL in hardware ID",
            "registration.decided",
            decided,
            "hardware_id",
            "b8\x00eb",
            "a hardware ID",
        ),
        (
            "registration.decided",
            "integer past 2^63",
            "registration.decided",
            decided,
            "credential_generation",
            PAST_INT64,
            "an integer from 0",
        ),
        (
            "registration.outcomes",
            "non-UUID ID",
            "registration.outcome",
            outcome,
            "account_id",
            "x-1",
            "a UUID",
        ),
        (
            "registration.outcomes",
            "NUL in hardware ID",
            "registration.outcome",
            outcome,
            "hardware_id",
            "b8\x00eb",
            "a hardware ID",
        ),
        (
            "registration.outcomes",
            "integer past 2^63",
            "registration.outcome",
            outcome,
            "credential_generation",
            PAST_INT64,
            "an integer from 0",
        ),
        ("bulk.publish", "non-UUID ID", "bulk.publish", publish, "registration_id", "x-1", "a UUID"),
        (
            "bulk.publish",
            "integer past 2^63",
            "bulk.publish",
            publish,
            "after_line",
            PAST_INT64,
            "an integer from 0",
        ),
        ("bulk.publish", "time 1e308", "bulk.published", published, "at", HUGE_TIME, "Unix seconds"),
        ("bulk.publish", "NUL in an ID", "bulk.published", published, "account_id", "\x00", "a UUID"),
    ]
    kinds = [
        Kind(topic, what, uuid.uuid4().hex.encode(), _record(event_type, valid, field, value), rule)
        for topic, what, event_type, valid, field, value, rule in faults
    ]
    # A record without a value (a tombstone, as a compacting tool writes) on every topic.
    kinds += [
        Kind(topic, "no value (tombstone)", uuid.uuid4().hex.encode(), None, "not JSON") for topic in READERS
    ]
    # A valid refusal whose key is not UTF-8: the intake's outcome listener once died on it.
    bad_key = orjson.dumps({"type": "registration.outcome", "v": 1, **{**outcome, "request_id": _id()}})
    kinds.append(Kind("registration.outcomes", "key not UTF-8", b"\xff\xfe\x00poison", bad_key, None))
    return kinds


async def send(bootstrap: str, topics: Topics, kinds: list[Kind]) -> list[Sent]:
    """Each kind on every partition of its topic; returns where each landed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = []
        for kind in kinds:
            topic = f"{topics.prefix}.{kind.topic}"
            for partition in sorted(await producer.partitions_for(topic)):
                meta = await producer.send_and_wait(topic, kind.value, key=kind.key, partition=partition)
                sent.append(Sent(kind, topic, meta.partition, meta.offset))
        return sent
    finally:
        await producer.stop()


def expected(sent: list[Sent]) -> dict[tuple[str, str], Sent]:
    """(position, consumer) of every dead letter the poison must cause."""
    return {
        (s.source, service): s for s in sent if s.kind.reason is not None for service in READERS[s.kind.topic]
    }


async def dead_letters(
    bootstrap: str, topics: Topics, sent: list[Sent], within_s: float = 60
) -> tuple[dict[tuple[str, str], dict[str, str]], list[str]]:
    """The dead-letter headers of every expected (position, consumer), and the problems:
    one missing, or a reason without the rule its record breaks. Reads the dead-letter
    topic from its start until all are found or ``within_s`` passed."""
    wanted = expected(sent)
    found: dict[tuple[str, str], dict[str, str]] = {}
    consumer = AIOKafkaConsumer(
        topics.dead_letter, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + within_s
        while len(found) < len(wanted) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for record in records:
                    headers = {k: v.decode(errors="replace") for k, v in record.headers or ()}
                    place = (headers.get("fleetreg.source", ""), headers.get("fleetreg.consumer", ""))
                    if place in wanted:
                        found[place] = headers
    finally:
        await consumer.stop()
    problems = [
        f"not dead-lettered by {service}: {s.kind.topic} {s.kind.what} at {source}"
        for (source, service), s in wanted.items()
        if (source, service) not in found
    ]
    for place, headers in found.items():
        s = wanted[place]
        if s.kind.reason and s.kind.reason not in headers.get("fleetreg.error", ""):
            problems.append(f"{s.kind.topic} {s.kind.what}: reason {headers.get('fleetreg.error')!r}")
        if (
            headers.get("fleetreg.topic"),
            headers.get("fleetreg.partition"),
            headers.get("fleetreg.offset"),
        ) != (
            s.topic,
            str(s.partition),
            str(s.offset),
        ):
            problems.append(f"{s.kind.topic} {s.kind.what}: position headers {headers}")
    return found, problems


async def committed_past(
    bootstrap: str, groups: dict[str, str], sent: list[Sent], within_s: float = 60
) -> list[str]:
    """Every consumer group reading a poisoned partition committed past its poison (it was
    skipped, not retried forever); returns what is still behind after ``within_s``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + within_s
        while True:
            behind = []
            for service, group in groups.items():
                mine = [s for s in sent if service in READERS[s.kind.topic]]
                partitions = sorted({TopicPartition(s.topic, s.partition) for s in mine})
                offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
                for s in mine:
                    meta = offsets.get(TopicPartition(s.topic, s.partition))
                    if meta is None or meta.offset <= s.offset:
                        behind.append(f"{service} has not committed past {s.source}")
            if not behind or time.monotonic() > deadline:
                return behind
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
