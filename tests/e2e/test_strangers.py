"""Strangers write nothing unbounded (issue 21), on the running services, the real broker
and the real database.

* A flood of unknown codes from many source addresses (loopback 127.x.y.z, bound by the
  client) is refused by the intake itself: no record on registration.requested, no
  registry row but the refusal counters per source, and the answer a device got before.
* A code created a moment after the intake was asked about it is known at once.
* A revoked code retried by one board leaves one decision row per hardware ID and hour.
* Reference step 1 keeps one record per (code, hardware ID, source address); a
  2,000-device NAT boot from one address passes the default cap of new hardware IDs a
  minute (3,000), the next new one is refused (at step 1, and at step 2 in words the
  client logs), and step 2 from another address does not read this address's record.

The registry is shared with other tests (and other engineers): every count is of the
rows this test's own names, codes and addresses can reach.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.intake.compat.handlers import TOO_MANY_NEW
from shared.db.pool import Pool
from shared.domain.admission import REASON_REVOKED_CODE, REASON_UNKNOWN_CODE
from tests.support.api import Operator, register
from tests.support.sources import from_address
from tests.support.system import System

pytestmark = pytest.mark.e2e

Offsets = Callable[[], Awaitable[dict[int, int]]]
DEFAULT_NEW_PER_MINUTE = 3000  # FLEETREG_COMPAT_NEW_HARDWARE_IDS_PER_MINUTE's default
INFORMATION = "/apv/v27/bulk/registration/device/information/"


def read(text: str) -> dict[str, str]:
    """An answer as the reference client reads it (strip braces and quotes, split on commas)."""
    parts = text.strip("{}").replace('"', "").split(",")
    return dict(p.split(":", 1) for p in parts if ":" in p)


def addresses(count: int) -> list[str]:
    """``count`` (at most 13,000) loopback addresses of this run, drawn at random, so that
    counters and records of earlier runs, which live in Postgres, are not met again."""
    draw = uuid.uuid4().int
    second, third = draw % 200 + 20, (draw >> 8) % 200
    return [f"127.{second}.{third + i // 250}.{i % 250 + 1}" for i in range(count)]


@pytest.fixture
async def requested(system: System, infra: dict[str, str]) -> AsyncIterator[Callable[..., Any]]:
    """(end offsets of registration.requested, and the records between two offset maps)."""
    topic = f"{system.env['FLEETREG_TOPIC_PREFIX']}.registration.requested"
    consumer = AIOKafkaConsumer(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"], enable_auto_commit=False)
    await consumer.start()

    # The partitions the services created the topic with (FLEETREG_TOPIC_PARTITIONS).
    count = int(system.env.get("FLEETREG_TOPIC_PARTITIONS", "6"))
    partitions = [TopicPartition(topic, p) for p in range(count)]

    async def ends() -> dict[TopicPartition, int]:
        found = dict(await consumer.end_offsets(partitions))
        assert len(found) == count
        return found

    async def between(start: dict[TopicPartition, int], end: dict[TopicPartition, int]) -> list[bytes]:
        wanted = [tp for tp in end if end[tp] > start.get(tp, 0)]
        if not wanted:
            return []
        consumer.assign(wanted)
        for tp in wanted:
            consumer.seek(tp, start.get(tp, 0))
        values: list[bytes] = []
        done: set[TopicPartition] = set()
        deadline = time.monotonic() + 30
        while len(done) < len(wanted) and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for record in records:
                    if record.offset < end[tp]:
                        values.append(record.value or b"")
                if await consumer.position(tp) >= end[tp]:
                    done.add(tp)
        return values

    try:
        yield ends, between
    finally:
        await consumer.stop()


async def test_a_rotating_source_flood_of_unknown_codes_publishes_and_writes_nothing(
    system: System, operator: Operator, pool: Pool, requested: Any
) -> None:
    ends, between = requested
    run = uuid.uuid4().hex[:10]
    sources = addresses(100)
    attempts_per_source = 20  # 2,000 attempts, each source under its refusal allowance
    code = (await operator.product())["bulk_identification_code"]
    real = f"real-{run}"
    before = await ends()
    decisions_before = await pool.fetchval("SELECT count(*) FROM registration_decisions")
    started = time.monotonic()

    async def flood(source: str) -> Counter[tuple[int, str]]:
        seen: Counter[tuple[int, str]] = Counter()
        async with from_address(source) as client:
            for i in range(attempts_per_source):
                code = str(uuid.uuid4()).upper()  # a fresh code every time: no cache can hold them
                hardware_id = f"flood-{run}-{i}"
                if i % 2:
                    body = {"bulk_identification_code": code, "hardware_id": hardware_id}
                    async with client.post(f"{system.device_url}/v1/registrations", json=body) as r:
                        answer = await r.json()
                        seen[r.status, answer["reason"]] += 1
                        assert set(answer) == {"status", "request_id", "reason", "reason_code"}, answer
                        assert answer["status"] == "refused"
                else:
                    body = {"BulkIdentificationCode": code, "HardwareId": hardware_id, "CPUId": "c"}
                    async with client.post(f"{system.device_url}{INFORMATION}", json=body) as r:
                        seen[r.status, read(await r.text())["reason"]] += 1
        return seen

    async def device() -> int:
        async with from_address(sources[0]) as client:
            return (await register(client, system.device_url, code, real)).status

    counted: Counter[tuple[int, str]] = Counter()
    *floods, real_status = await asyncio.gather(*(flood(s) for s in sources), device())
    for found in floods:
        counted.update(found)
    elapsed = time.monotonic() - started
    assert real_status == 200  # the real device, from one of the flood's addresses, registers
    # The answers devices got before: 403 refused (native), false (reference), same reason.
    assert counted == {(403, REASON_UNKNOWN_CODE): 1000, (200, REASON_UNKNOWN_CODE): 1000}

    # Not one request published: the topic's records since the flood carry none of its IDs.
    after = await ends()
    published = await between(before, after)
    assert [v for v in published if f"flood-{run}".encode() in v] == []
    assert [v for v in published if real.encode() in v] != []  # what was published is read
    # No registry row names the flood; the refusal counters hold one row per source and
    # window (the e2e system counts one window, FLEETREG_LIMIT_REFUSALS_PER_SOURCE).
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM registration_decisions WHERE claimed_hardware_id LIKE $1", f"flood-{run}-%"
        )
        == 0
    )
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM device_information WHERE hardware_id LIKE $1", f"flood-{run}-%"
        )
        == 0
    )
    assert (
        await pool.fetchval("SELECT count(*) FROM devices WHERE hardware_id LIKE $1", f"flood-{run}-%") == 0
    )
    windows = len(system.env["FLEETREG_LIMIT_REFUSALS_PER_SOURCE"].split(";"))
    counters = await pool.fetchval(
        "SELECT count(*) FROM throttle_counters WHERE split_part(key, '/', 3) = ANY($1::text[])", sources
    )
    assert counters == windows * len(sources), counters
    print(  # the figures of the report (pytest -s)
        f"\nflood: 2000 attempts from {len(sources)} sources in {elapsed:.1f} s "
        f"({2000 / elapsed:.0f}/s); registration.requested records in that time: {len(published)} "
        f"(of the flood: 0); registration_decisions rows in that time (every test): "
        f"{await pool.fetchval('SELECT count(*) FROM registration_decisions') - decisions_before} "
        f"(of the flood: 0); throttle_counters rows: {counters}"
    )


async def test_a_code_created_a_moment_after_it_was_refused_is_known_at_once(
    system: System, operator: Operator, pool: Pool, session: aiohttp.ClientSession
) -> None:
    """The intake keeps unknown codes for FLEETREG_CODE_CACHE_SECONDS (10 s); a code that
    comes into existence meanwhile must not be refused: the transaction that creates it
    sends ``codes`` on fleetreg_invalidate (as shared.db.products does on lock and
    rotation) and every intake drops its cache."""
    registration = await operator.product()
    future = str(uuid.uuid4()).upper()
    refused = await register(session, system.device_url, future, f"early-{uuid.uuid4().hex[:8]}")
    assert (refused.status, refused.body["reason"]) == (403, REASON_UNKNOWN_CODE)
    async with pool.acquire() as conn, conn.transaction():
        # What a rotation does, to the very code asked about a moment ago.
        await conn.execute(
            "UPDATE bulk_identification_codes SET revoked_at = now() WHERE code = $1",
            registration["bulk_identification_code"],
        )
        await conn.execute(
            "INSERT INTO bulk_identification_codes (code, product_id) VALUES ($1, $2)",
            future,
            registration["product_id"],
        )
        await conn.execute("SELECT pg_notify('fleetreg_invalidate', 'codes')")
    deadline = time.monotonic() + 1.0  # the notification's delivery time (docs/security.md)
    while True:
        answer = await register(session, system.device_url, future, f"late-{uuid.uuid4().hex[:8]}")
        if answer.status == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert answer.status == 200, answer.body


async def test_a_revoked_code_retried_by_a_board_keeps_one_decision_row_an_hour(
    system: System, operator: Operator, pool: Pool, session: aiohttp.ClientSession
) -> None:
    registration = await operator.product()
    old = registration["bulk_identification_code"]
    await operator.call("POST", f"/v1/auto-registrations/{registration['id']}/rotate-code", expect=200)
    board, other = f"stale-{uuid.uuid4().hex[:8]}", f"stale-{uuid.uuid4().hex[:8]}"
    first_hour = int(time.time() // 3600)
    # Retried the way a stale board does it, a few at a time, in any case of its ID.
    for batch in range(6):
        answers = await asyncio.gather(
            *(register(session, system.device_url, old, board if i % 2 else board.upper()) for i in range(10))
        )
        assert {(a.status, a.body["reason"]) for a in answers} == {(403, REASON_REVOKED_CODE)}, batch
    assert (await register(session, system.device_url, old, other)).status == 403
    rows = await pool.fetch(
        """SELECT lower(claimed_hardware_id) AS hardware_id, reason FROM registration_decisions
           WHERE product_id = $1 ORDER BY 1""",
        registration["product_id"],
    )
    found = Counter(tuple(r) for r in rows)
    if int(time.time() // 3600) == first_hour:
        assert found == {(board, REASON_REVOKED_CODE): 1, (other, REASON_REVOKED_CODE): 1}
    else:  # the retries spanned two hours: one row in each at most
        assert found[board, REASON_REVOKED_CODE] <= 2 and set(found) <= {
            (board, REASON_REVOKED_CODE),
            (other, REASON_REVOKED_CODE),
        }
    # The operator sees each stale board in the audit trail.
    trail = await operator.call("GET", "/v1/registration-decisions?decision=refused", expect=200)
    assert {d["claimed_hardware_id"].lower() for d in trail["decisions"]} == {board, other}


async def test_reference_step_1_is_one_record_per_source_and_capped_for_new_hardware_ids(
    system: System, operator: Operator, pool: Pool
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    nat, elsewhere = addresses(2)
    url = f"{system.device_url}{INFORMATION}"

    async def step_1(client: aiohttp.ClientSession, hardware_id: str, cpu: str = "cpu") -> dict[str, str]:
        body = {"BulkIdentificationCode": code, "HardwareId": hardware_id, "CPUId": cpu, "MACAddress": "m"}
        async with client.post(url, json=body) as r:
            assert r.status == 200
            return read(await r.text())

    async def many(client: aiohttp.ClientSession, hardware_ids: list[str], cpu: str = "cpu") -> Counter[str]:
        semaphore = asyncio.Semaphore(50)

        async def one(hardware_id: str) -> str:
            async with semaphore:
                answer = await step_1(client, hardware_id, cpu)
                return answer["status"] if answer["status"] == "true" else answer["reason"]

        return Counter(await asyncio.gather(*(one(h) for h in hardware_ids)))

    async with from_address(nat) as client:
        # One board reporting 1,000 times: one record, overwritten.
        started = time.monotonic()
        assert await many(client, ["repeat"] * 1000) == {"true": 1000}
        repeated_s = time.monotonic() - started
        # A 2,000-device NAT boot from the same address passes, and so do new hardware IDs
        # up to the cap a minute; the next new one is refused, a known one still overwritten.
        started = time.monotonic()
        boot = [f"nat-{i}" for i in range(2000)]
        assert await many(client, boot) == {"true": 2000}
        boot_s = time.monotonic() - started
        more = [f"more-{i}" for i in range(DEFAULT_NEW_PER_MINUTE - 2001)]
        assert await many(client, more) == {"true": len(more)}
        # On a machine slow enough to take a minute for this, the first records would have
        # left the window: they were all created within the minute, as far as the cap knows.
        await pool.execute(
            "UPDATE device_information SET created_at = now() WHERE source = $1 AND bulk_identification_code = $2",
            nat,
            code,
        )
        assert (await step_1(client, "one-too-many"))["reason"] == TOO_MANY_NEW
        assert (await step_1(client, "nat-7", cpu="rebooted"))["status"] == "true"
        # Step 2 of the refused device says why, in words the client logs, and decides nothing.
        path = f"/apv/v27/bulk/registration/device/friendly/configuration/{code}/one-too-many/"
        async with client.get(f"{system.device_url}{path}") as r:
            assert read(await r.text()) == {"status": "false", "reason": TOO_MANY_NEW}
    rows = await pool.fetch(
        "SELECT hardware_id, source, count(*) OVER () AS total FROM device_information "
        "WHERE bulk_identification_code = $1 AND hardware_id IN ('repeat', 'nat-7', 'one-too-many')",
        code,
    )
    assert sorted((r["hardware_id"], r["source"]) for r in rows) == [("nat-7", nat), ("repeat", nat)]
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM device_information WHERE bulk_identification_code = $1", code
        )
        == DEFAULT_NEW_PER_MINUTE
    )
    assert await operator.devices(hardware_id="one-too-many") == []

    # Step 2 from another address reads its own (absent) record, not the NAT's: the device
    # it registers carries no fingerprint, where the NAT's record holds one.
    async with from_address(elsewhere) as client:
        path = f"/apv/v27/bulk/registration/device/friendly/configuration/{code}/nat-7/"
        async with client.get(f"{system.device_url}{path}") as r:
            assert read(await r.text())["status"] == "true"
    fingerprint = await pool.fetchval(
        "SELECT fingerprint FROM devices WHERE account_id = $1 AND hardware_id = 'nat-7'", operator.account_id
    )
    reported = await pool.fetchval(
        "SELECT fingerprint FROM device_information WHERE bulk_identification_code = $1 AND hardware_id = 'nat-7'",
        code,
    )
    assert reported and fingerprint != reported
    print(
        f"\nstep 1: 1,000 repeats in {repeated_s:.1f} s ({1000 / repeated_s:.0f}/s) -> 1 row; "
        f"2,000-device NAT boot in {boot_s:.1f} s ({2000 / boot_s:.0f}/s); rows for the code: "
        f"{DEFAULT_NEW_PER_MINUTE} (the cap), the next new hardware ID refused"
    )
