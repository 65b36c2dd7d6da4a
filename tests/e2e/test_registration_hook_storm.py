"""A registration hook down for 30 s during a 2,000-device storm (issue 27, item 5), against
the real pipeline: every device of the hooked registration is provisioned once the hook is
back, none refused, one device each; another account's storm, at the same time, completes
while the hook is still down.

The devices are ``cli.simulate``'s, booting as real ones do (two-call boot, each pending
answer polled after its Retry-After). Account A's 2,000 devices arrive at 200 a second from
the storm's start, so all of them register while A's hook answers 503 (fail closed: each
is answered pending, its claim reserved); account B's 2,000 devices (no hook) boot 200 at
once beside them. A's hook is down for 30 s, and longer if B's storm is not over by then
(a loaded 2-core machine): B must complete while A's hook is down. Timing is recorded,
never asserted: the test asserts orderings (B complete before the hook returned, no A
device ready before it) and what the registry holds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from cli.simulate import plan_fleet, summarize
from shared.db.pool import Pool
from tests.chaos.checks import storm_registry
from tests.support.api import Operator, new_operator, register
from tests.support.hook_storm import DEVICE_OPTIONS, boot, hooked_registration, start_hook
from tests.support.system import System

pytestmark = pytest.mark.e2e

DEVICES = 2000
OUTAGE_S = 30.0
A_RATE_PER_S = 200.0  # A's devices all arrive within the outage's first 10 s
B_CONCURRENCY = 200
SERVICES = [{"type": "ssh", "port": 22}]
# A device gives up 4 minutes after its first call: a storm that does not recover fails the
# test (with what each device ended on) instead of holding it for the simulator's 10.
OPTIONS = replace(DEVICE_OPTIONS, deadline_s=240.0)


async def test_a_hook_down_for_30_s_strands_no_device_of_its_storm_and_slows_no_other_account(
    system: System, operator: Operator, session: aiohttp.ClientSession, pool: Pool
) -> None:
    hook = await start_hook(down=True, outage="503")
    try:
        hooked = await hooked_registration(operator, SERVICES, hook.url)
        other = await new_operator(session, pool, system.operator_url)
        plain = await hooked_registration(other, SERVICES, None)
        plan_a = plan_fleet(hooked["bulk_identification_code"], DEVICES, 0.05, 0.01)
        plan_b = plan_fleet(plain["bulk_identification_code"], DEVICES, 0.05, 0.01)

        storm_a = asyncio.create_task(
            boot(plan_a, system.device_url, rate_per_s=A_RATE_PER_S, options=OPTIONS)
        )
        storm_b = asyncio.create_task(
            boot(plan_b, system.device_url, concurrency=B_CONCURRENCY, options=OPTIONS)
        )
        await asyncio.sleep(OUTAGE_S)
        b_within_outage = storm_b.done()
        # The hook stays down until B's storm is over (30 s at least): B must complete while
        # A's hook is down, however slow the machine; were B held by A's hook, B's devices
        # would reach their deadline and fail instead.
        b = await storm_b
        await hook.come_back()
        a = await storm_a
        await hook.read_calls()
    finally:
        await hook.stop()
    returned_at = hook.returned_at
    assert returned_at is not None
    calls_while_down = sum(1 for c in hook.calls if c.down)

    # B, without a hook, was not held up by A's: its whole storm completed while A's hook was down.
    summary_b = summarize(plan_b, b.results, b.seconds)
    assert (summary_b.provisioned, summary_b.errors) == (DEVICES, 0), summary_b.error_kinds
    assert b.ended_at <= returned_at

    # A: every device provisioned, none refused, none ready before its hook was back.
    summary_a = summarize(plan_a, a.results, a.seconds)
    assert summary_a.error_kinds == {}, summary_a.error_kinds
    assert summary_a.provisioned == DEVICES
    assert calls_while_down > 0
    assert all(booted.ended_at > returned_at for booted in a.booted)
    device_ids = [r.device_id for r in a.results]
    hardware_ids = [r.hardware_id for r in a.results]
    assert len(set(device_ids)) == DEVICES and len(set(hardware_ids)) == DEVICES
    acknowledged = {r.index: r.device_id for r in a.results if r.device_id}
    registry = await storm_registry(pool, operator.account_id, DEVICES, acknowledged)
    assert (registry["lost"], registry["duplicated"], registry["devices_in_registry"]) == (0, 0, DEVICES), (
        registry
    )

    # The hook decided every device once back: a call about each after its return, and
    # each reservation's call row allowed.
    asked_after = {c.data.get("assigned_hardware_id") for c in hook.calls_after_return()}
    assert set(hardware_ids) <= asked_after, len(set(hardware_ids) - asked_after)
    assert {c.data.get("registration_id") for c in hook.calls} == {hooked["id"]}
    rows = await pool.fetch(
        "SELECT outcome, device_id::text AS device_id FROM registration_hook_calls WHERE registration_id = $1",
        uuid.UUID(hooked["id"]),
    )
    assert Counter(r["outcome"] for r in rows) == {"allow": DEVICES}
    assert {r["device_id"] for r in rows} == set(device_ids)

    last_ready = max(booted.ended_at for booted in a.booted)
    print(  # the figures, for the record (speed is the benchmark's: tests/bench/hooks.py)
        f"\nB's storm: {b.seconds:.1f} s ({'within' if b_within_outage else 'past'} the 30 s); A's hook back at {returned_at - a.started_at:.1f} s, "
        f"{calls_while_down} calls while down, {len(hook.calls_after_return())} after; "
        f"A's last device ready {last_ready - returned_at:.1f} s after the return"
    )


async def _final(session: aiohttp.ClientSession, device_url: str, request_id: str) -> dict[str, Any]:
    """Poll a registration request until its answer is final (at most a minute)."""
    deadline = time.monotonic() + 60
    while True:
        async with session.get(f"{device_url}/v1/registrations/{request_id}") as response:
            body: dict[str, Any] = await response.json()
        if body.get("status") != "pending" or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.5)


async def test_every_request_of_an_attempt_retried_while_the_hook_was_down_is_answered_once_it_is_back(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    """A device whose answer was lost sends its registration again (the same Idempotency-Key)
    while the hook is down: both requests are the one reservation, and once the hook allows
    it both are answered ready, as the same device (the storm's lost-response devices poll
    their first request too)."""
    hook = await start_hook(down=True, outage="503")
    try:
        registration = await hooked_registration(operator, SERVICES, hook.url)
        code, hardware_id = registration["bulk_identification_code"], f"HR-{uuid.uuid4().hex[:8]}"
        sent = [
            await register(
                session, system.device_url, code, hardware_id, cpu_id="c1", idempotency_key="k", settle=False
            )
            for _ in range(2)
        ]
        assert [(a.status, a.body["status"]) for a in sent] == [(202, "pending")] * 2, [a.body for a in sent]
        await hook.come_back()
        answers = [await _final(session, system.device_url, a.body["request_id"]) for a in sent]
        await hook.read_calls()
    finally:
        await hook.stop()
    assert [a["status"] for a in answers] == ["ready", "ready"], answers
    assert answers[0]["device_id"] == answers[1]["device_id"]
    assert len({c.data["request_id"] for c in hook.calls_after_return()}) >= 1
