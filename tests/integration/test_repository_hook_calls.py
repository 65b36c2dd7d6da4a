"""shared.db.hook_calls on the real Postgres: a registration hook's recent calls as the
operator lists them (rows of registration_hook_calls, migration 0033, inserted here as
deduplication and the notifier write them), scoped to the account, and the audit of a
test call."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.db import audit, hook_calls
from shared.db.pool import Pool
from shared.domain.accounts import Account
from shared.errors import NotFound
from tests.support import registry

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


async def _call(
    pool: Pool,
    account_id: str,
    registration_id: str,
    hardware_id: str,
    at: datetime,
    *,
    outcome: str = "waiting",
    device_id: str | None = None,
    assigned: str | None = None,
    decision: str = "new",
    http_status: int | None = None,
    latency_ms: int | None = None,
    attempts: int = 0,
) -> str:
    call_id = "msg_" + uuid.uuid4().hex
    request = {
        "request_id": str(uuid.uuid4()),
        "hardware_id": hardware_id,
        "fingerprint": "f",
        "decision": decision,
        "assigned_hardware_id": assigned or hardware_id,
        "product_id": str(uuid.uuid4()),
        "registration_id": registration_id,
        "attestation": "code",
        "source": "203.0.113.7",
        "protocol": "native",
    }
    await pool.execute(
        """INSERT INTO registration_hook_calls
               (call_id, registration_id, account_id, device_id, request_id, request, decided, outcome,
                http_status, latency_ms, attempts, reserved_until, created_at, answered_at)
           VALUES ($1, $2, $3, $4, $5, $6::jsonb, '{}'::jsonb, $7, $8, $9, $10, $11, $12, $13)""",
        call_id,
        registration_id,
        account_id,
        device_id,
        request["request_id"],
        json.dumps(request),
        outcome,
        http_status,
        latency_ms,
        attempts,
        at + timedelta(minutes=15),
        at,
        at + timedelta(milliseconds=30) if outcome in ("allow", "deny") else None,
    )
    return call_id


async def test_recent_calls_are_newest_first_with_their_request_and_outcome(pool: Pool) -> None:
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id)
    registration_id = await registry.new_registration(pool, product)
    device_id = await registry.new_device(pool, product, registration_id, "SN-1-1")
    oldest = await _call(pool, account_id, registration_id, "SN-0", T0, outcome="deny", http_status=200)
    allowed = await _call(
        pool,
        account_id,
        registration_id,
        "SN-1",
        T0 + timedelta(seconds=1),
        outcome="allow",
        device_id=device_id,
        assigned="SN-1-1",
        decision="clone",
        http_status=200,
        latency_ms=21,
        attempts=2,
    )
    newest = await _call(pool, account_id, registration_id, "SN-2", T0 + timedelta(seconds=2))

    found = await hook_calls.recent_calls(pool, account_id, "auto", registration_id, 50)

    assert [c.call_id for c in found] == [newest, allowed, oldest]
    call = found[1]
    assert (call.hardware_id, call.assigned_hardware_id, call.decision, call.outcome) == (
        "SN-1",
        "SN-1-1",
        "clone",
        "allow",
    )
    assert (call.http_status, call.latency_ms, call.attempts, call.device_id) == (200, 21, 2, device_id)
    assert call.created_at == T0 + timedelta(seconds=1)
    assert call.answered_at == T0 + timedelta(seconds=1, milliseconds=30)
    assert (found[0].outcome, found[0].http_status, found[0].latency_ms, found[0].answered_at) == (
        "waiting",
        None,
        None,
        None,
    )
    assert [
        c.call_id for c in await hook_calls.recent_calls(pool, account_id, "auto", registration_id, 2)
    ] == [
        newest,
        allowed,
    ]


async def test_another_registrations_calls_are_not_listed(pool: Pool) -> None:
    account_id = await registry.new_account(pool)
    first = await registry.new_registration(pool, await registry.new_product(pool, account_id))
    second = await registry.new_registration(pool, await registry.new_product(pool, account_id))
    await _call(pool, account_id, first, "SN-A", T0)
    assert await hook_calls.recent_calls(pool, account_id, "auto", second, 50) == []


async def test_another_accounts_registration_is_not_found(pool: Pool) -> None:
    owner = await registry.new_account(pool)
    stranger = await registry.new_account(pool)
    registration_id = await registry.new_registration(pool, await registry.new_product(pool, owner))
    await _call(pool, owner, registration_id, "SN-A", T0)
    with pytest.raises(NotFound):
        await hook_calls.recent_calls(pool, stranger, "auto", registration_id, 50)
    # The kind is part of the address: an auto registration is no bulk registration.
    with pytest.raises(NotFound):
        await hook_calls.recent_calls(pool, owner, "bulk", registration_id, 50)
    with pytest.raises(NotFound):
        await hook_calls.recent_calls(pool, owner, "auto", str(uuid.uuid4()), 50)


async def test_a_test_call_is_audited_with_the_host_and_outcome(pool: Pool) -> None:
    account_id = await registry.new_account(pool)
    registration_id = await registry.new_registration(pool, await registry.new_product(pool, account_id))
    await hook_calls.record_test(
        pool, Account(account_id, "test"), "auto", registration_id, "hooks.example.com", "timeout"
    )
    events = await audit.list_events(
        pool, account_id, audit.AuditFilter(action="auto_registration.hook_tested"), limit=10
    )
    assert [(e.target_type, e.target_id, e.changes) for e in events] == [
        ("auto_registration", registration_id, {"hook_host": "hooks.example.com", "outcome": "timeout"})
    ]


async def test_a_bulk_registrations_test_call_is_audited_under_the_bulk_names(pool: Pool) -> None:
    """A bulk registration's actions are ``bulk.*`` (as its hook's changes), its target a
    ``bulk_registration``."""
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id)
    registration_id = await registry.new_registration(pool, product, kind="bulk", status="preregistered")
    await hook_calls.record_test(
        pool, Account(account_id, "test"), "bulk", registration_id, "hooks.example.com", "allow"
    )
    events = await audit.list_events(pool, account_id, audit.AuditFilter(action="bulk.hook_tested"), limit=10)
    assert [(e.target_type, e.target_id, e.changes) for e in events] == [
        ("bulk_registration", registration_id, {"hook_host": "hooks.example.com", "outcome": "allow"})
    ]
