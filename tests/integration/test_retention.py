"""Retention on the real Postgres: expired registration decisions and operator audit
events are deleted in small batches, fresh ones kept, a table kept for 0 days is kept
forever, device certificates expired for longer than their keep time are deleted (the
CRL lists none of them), and two instances pruning at once delete each row once between
them."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.operator.handlers.trail import prune_expired
from services.operator.settings import RetentionSettings
from shared.db.certificates import revoked
from shared.db.pool import Pool
from tests.support import registry

pytestmark = pytest.mark.integration

# Far enough back that only this test's rows are past the keep times used here.
ANCIENT = datetime(2001, 1, 1, tzinfo=UTC)
KEEP_DAYS = 365 * 20
CUTOFF = datetime.now(UTC) - timedelta(days=KEEP_DAYS)


async def _seed(pool: Pool, account_id: str, old: int, fresh: int) -> tuple[list[str], list[str]]:
    """``old`` + ``fresh`` audit events and decisions; returns the old and fresh event IDs."""
    old_ids, fresh_ids = [], []
    for index in range(old + fresh):
        is_old = index < old
        when = ANCIENT + timedelta(seconds=index) if is_old else datetime.now(UTC)
        event_id = str(uuid.uuid4())
        (old_ids if is_old else fresh_ids).append(event_id)
        await pool.execute(
            """INSERT INTO operator_audit_events (id, account_id, at, action, target_type, target_id)
               VALUES ($1, $2, $3, 'device.disabled', 'device', 'x')""",
            event_id,
            account_id,
            when,
        )
        await pool.execute(
            """INSERT INTO registration_decisions (request_id, account_id, claimed_hardware_id, decision,
                   status, received_at, decided_at)
               VALUES ($1, $2, 'H', 'refused', 'refused', $3, $3)""",
            event_id,
            account_id,
            when,
        )
    return old_ids, fresh_ids


async def _left(pool: Pool, account_id: str) -> tuple[set[str], set[str]]:
    events = await pool.fetch("SELECT id::text FROM operator_audit_events WHERE account_id = $1", account_id)
    decisions = await pool.fetch(
        "SELECT request_id::text AS id FROM registration_decisions WHERE account_id = $1", account_id
    )
    return {r["id"] for r in events}, {r["id"] for r in decisions}


async def test_expired_records_are_pruned_in_batches_and_fresh_ones_kept(pool: Pool) -> None:
    account_id = await registry.new_account(pool)
    old, fresh = await _seed(pool, account_id, old=7, fresh=3)

    deleted = await prune_expired(
        pool, RetentionSettings(decisions_days=KEEP_DAYS, audit_days=KEEP_DAYS, batch_rows=2)
    )

    # expired sessions of any test (tests/integration/test_console_sessions.py), deleted
    # devices of any test past the stale-credential window
    deleted.pop("console_sessions")
    deleted.pop("deleted_devices")
    deleted.pop("device_certificates")  # any test's, expired a month ago
    deleted.pop("registration_hook_calls")  # tested below
    assert deleted == {"registration_decisions": 7, "operator_audit_events": 7}
    assert await _left(pool, account_id) == (set(fresh), set(fresh))
    assert old  # the seeded old rows were there to delete


async def test_a_table_kept_for_zero_days_is_kept_forever(pool: Pool) -> None:
    account_id = await registry.new_account(pool)
    old, fresh = await _seed(pool, account_id, old=2, fresh=1)

    deleted = await prune_expired(pool, RetentionSettings(decisions_days=KEEP_DAYS, audit_days=0))

    deleted.pop("console_sessions")
    deleted.pop("deleted_devices")
    deleted.pop("device_certificates")  # any test's, expired a month ago
    deleted.pop("registration_hook_calls")
    assert deleted == {"registration_decisions": 2}
    assert await _left(pool, account_id) == (set(old + fresh), set(fresh))


async def test_two_instances_pruning_at_once_delete_each_row_once(pool: Pool) -> None:
    account_id = await registry.new_account(pool)
    await _seed(pool, account_id, old=40, fresh=2)
    settings = RetentionSettings(decisions_days=KEEP_DAYS, audit_days=KEEP_DAYS, batch_rows=3)
    expired = await pool.fetchval("SELECT count(*) FROM operator_audit_events WHERE at < $1", CUTOFF)
    assert expired >= 40  # (another test's rows kept "forever" may be there too)

    one, two = await asyncio.gather(prune_expired(pool, settings), prune_expired(pool, settings))

    assert one["operator_audit_events"] + two["operator_audit_events"] == expired
    events, decisions = await _left(pool, account_id)
    assert (len(events), len(decisions)) == (2, 2)


async def test_certificates_expired_past_their_keep_time_are_pruned_and_no_other(pool: Pool) -> None:
    account_id = await registry.new_account(pool)
    now = datetime.now(UTC)
    ages = {
        "long expired": now - timedelta(days=31),
        "just expired": now - timedelta(days=1),
        "valid": now + timedelta(days=1),
    }
    serials = {name: uuid.uuid4().hex for name in ages}
    for name, not_after in ages.items():
        await pool.execute(
            """INSERT INTO device_certificates (serial, account_id, device_id, hardware_id, public_key_sha256,
                   certificate, not_after, revoked_at, revocation_reason)
               VALUES ($1, $2, $3, 'H', '\\x00', '\\x00', $4, now(), 'disabled')""",
            serials[name],
            account_id,
            str(uuid.uuid4()),
            not_after,
        )

    kept_forever = await prune_expired(pool, RetentionSettings(expired_certificates_days=0))
    assert "device_certificates" not in kept_forever
    deleted = await prune_expired(pool, RetentionSettings(expired_certificates_days=30, batch_rows=1))

    assert deleted["device_certificates"] >= 1  # (another test's long-expired rows too)
    left = await pool.fetch("SELECT serial FROM device_certificates WHERE account_id = $1", account_id)
    assert {r["serial"] for r in left} == {serials["just expired"], serials["valid"]}
    # Only the unexpired one is what the CRL lists (shared.db.certificates.revoked).
    assert [r.serial for r in await revoked(pool, account_id)] == [serials["valid"]]


async def test_answered_hook_calls_are_pruned_with_the_decisions_and_held_ones_never(pool: Pool) -> None:
    """A registration hook's calls are kept as long as the decisions; a reservation still
    held (not answered) is never pruned, however old: the hook sweep releases it."""
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id)
    registration_id = await registry.new_registration(pool, product)
    rows = {"old-allow": ("allow", ANCIENT), "old-held": ("waiting", ANCIENT), "new-deny": ("deny", None)}
    for call_id, (outcome, created_at) in rows.items():
        await pool.execute(
            """INSERT INTO registration_hook_calls (call_id, registration_id, account_id, request_id, request,
                   decided, outcome, reserved_until, created_at)
               VALUES ($1, $2, $3, $4, '{}', '{}', $5, now(), coalesce($6, now()))""",
            f"{call_id}-{registration_id}",
            registration_id,
            account_id,
            str(uuid.uuid4()),
            outcome,
            created_at,
        )

    await prune_expired(pool, RetentionSettings(decisions_days=KEEP_DAYS, audit_days=KEEP_DAYS))

    left = await pool.fetch(
        "SELECT call_id FROM registration_hook_calls WHERE registration_id = $1", registration_id
    )
    assert {r["call_id"].rsplit("-", 5)[0] for r in left} == {"old-held", "new-deny"}
