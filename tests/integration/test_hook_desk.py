"""The notifier's desk of registration hook calls (services/notifier/rulings.Desk) on the
real Postgres: a storm's takes and allows coalesced into shared statements, each call still
taken once and each ruling still applied to its own device; one bad ruling fails alone."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from services.notifier.rulings import Desk
from shared.db.hooks import CallResult
from shared.db.pool import Pool
from tests.support import registry

pytestmark = pytest.mark.integration


async def _waiting_calls(pool: Pool, count: int) -> tuple[list[str], dict[str, str]]:
    """``count`` reserved devices of a registration with a hook, each with a waiting call;
    returns the call IDs and each call's device."""
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id)
    registration_id = await registry.new_registration(pool, product)
    await pool.execute(
        "UPDATE registrations SET hook_url = 'http://127.0.0.1:9/', hook_secret_sealed = '\\x00' WHERE id = $1",
        registration_id,
    )
    calls, devices = [], {}
    for n in range(count):
        device_id = await registry.new_device(
            pool, product, registration_id, f"desk-{n}-{uuid.uuid4().hex[:6]}"
        )
        call_id = f"msg_{uuid.uuid4().hex}"
        await pool.execute(
            """INSERT INTO registration_hook_calls (call_id, registration_id, account_id, device_id,
                   request_id, request, decided, outcome, reserved_until)
               VALUES ($1, $2, $3, $4, $5, '{}', $6, 'waiting', now() + interval '15 minutes')""",
            call_id,
            registration_id,
            account_id,
            device_id,
            str(uuid.uuid4()),
            json.dumps({"device_id": device_id}),
        )
        calls.append(call_id)
        devices[call_id] = device_id
    return calls, devices


async def test_a_storms_calls_are_taken_and_allowed_in_shared_statements_each_once(pool: Pool) -> None:
    calls, devices = await _waiting_calls(pool, 40)
    desk = Desk(pool)

    # Every call asked for twice at once (a redelivered record beside its redial).
    taken = await asyncio.gather(*(desk.take(call_id) for call_id in calls + calls))
    firsts, repeats = taken[: len(calls)], taken[len(calls) :]
    allowed = CallResult("allow", {"allow": True}, 200, 21)
    settled = await asyncio.gather(
        *(
            desk.confirm(call, allowed, {"name": f"named-{call.call_id[-6:]}", "data": {"n": call.call_id}})
            for call in firsts
            if call is not None
        )
    )

    assert [c.call_id if c else None for c in firsts] == calls
    assert repeats == [None] * len(calls)  # made once: the second asker finds it taken
    assert desk._takes.batches < len(calls) and desk._confirms.batches < len(calls)
    assert [s.device_id if s else None for s in settled] == [devices[c] for c in calls]
    rows = await pool.fetch(
        """SELECT d.id::text, d.name, d.hook_data->>'n' AS n,
                  (SELECT count(*) FROM device_events e WHERE e.device_id = d.id AND e.kind = 'hook_allowed') AS events
           FROM devices d WHERE d.id = ANY($1::uuid[])""",
        list(devices.values()),
    )
    by_device = {r["id"]: r for r in rows}
    for call_id, device_id in devices.items():
        assert (by_device[device_id]["name"], by_device[device_id]["n"], by_device[device_id]["events"]) == (
            f"named-{call_id[-6:]}",
            call_id,
            1,
        )
    outcomes = await pool.fetch(
        "SELECT outcome, count(*) FROM registration_hook_calls WHERE call_id = ANY($1::text[]) GROUP BY outcome",
        calls,
    )
    assert [(r["outcome"], r["count"]) for r in outcomes] == [("allow", len(calls))]


async def test_one_bad_ruling_fails_alone_and_its_call_stays_to_be_made_again(pool: Pool) -> None:
    calls, devices = await _waiting_calls(pool, 6)
    desk = Desk(pool)
    taken = await asyncio.gather(*(desk.take(call_id) for call_id in calls))
    allowed = CallResult("allow", {"allow": True}, 200, 20)
    bad = calls[2]

    results = await asyncio.gather(
        *(
            desk.confirm(call, allowed, {"name": "bad\0name" if call.call_id == bad else "good"})
            for call in taken
            if call is not None
        ),
        return_exceptions=True,
    )

    failed = [calls[i] for i, r in enumerate(results) if isinstance(r, Exception)]
    assert failed == [bad]
    assert all(
        r is not None and not isinstance(r, Exception) for i, r in enumerate(results) if calls[i] != bad
    )
    states = dict(
        await pool.fetch(
            "SELECT call_id, outcome FROM registration_hook_calls WHERE call_id = ANY($1::text[])", calls
        )
    )
    assert states == {c: ("calling" if c == bad else "allow") for c in calls}
    assert await pool.fetchval("SELECT name FROM devices WHERE id = $1", devices[bad]) != "bad\0name"
