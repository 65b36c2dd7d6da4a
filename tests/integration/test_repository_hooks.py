"""The registration hooks' call rows (shared/db/hooks.py) on the real Postgres: which
failed calls the notifier's redial makes again."""

from __future__ import annotations

import json
import uuid

import pytest

from shared.db import hooks
from shared.db.pool import Pool
from tests.support import registry

pytestmark = pytest.mark.integration


async def _failed_calls(pool: Pool, count: int, failed_s_ago: float) -> tuple[str, list[str]]:
    """A registration (of a product and account of its own) with ``count`` reserved devices
    whose calls failed ``failed_s_ago`` seconds ago (fail closed): its ID and the call IDs."""
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id)
    registration_id = await registry.new_registration(pool, product)
    call_ids = []
    for _ in range(count):
        device_id = await registry.new_device(pool, product, registration_id, f"HK{uuid.uuid4().hex[:10]}")
        call_id = f"msg_{uuid.uuid4().hex}"
        await pool.execute(
            """INSERT INTO registration_hook_calls (call_id, registration_id, account_id, device_id, request_id,
                   request, decided, outcome, reserved_until, created_at, answered_at)
               VALUES ($1, $2, $3, $4, $5, '{}'::jsonb, $6::jsonb, 'error', now() + interval '15 minutes',
                       now() - make_interval(secs => $7 + 1), now() - make_interval(secs => $7))""",
            call_id,
            registration_id,
            account_id,
            device_id,
            str(uuid.uuid4()),
            json.dumps({}),
            failed_s_ago,
        )
        call_ids.append(call_id)
    return registration_id, call_ids


async def test_the_redial_leaves_out_the_hooks_it_is_told_to_skip(pool: Pool) -> None:
    """A hook down (its breaker open) with many failed calls, all older than another hook's
    one failed call: left out of the round, they do not hide the other's call."""
    down, down_calls = await _failed_calls(pool, 3, failed_s_ago=600)
    _, other_calls = await _failed_calls(pool, 1, failed_s_ago=60)

    due = {call_id for call_id, _, _ in await hooks.due_again(pool, 5, 30, 1_000_000)}
    assert set(down_calls + other_calls) <= due
    skipping = await hooks.due_again(pool, 5, 30, 1_000_000, skip=[down])
    assert {call_id for call_id, _, _ in skipping} & set(down_calls + other_calls) == set(other_calls)
    assert all(registration_id != down for _, registration_id, _ in skipping)
    # A call failed more recently than the pause a device is told is not due yet.
    _, fresh = await _failed_calls(pool, 1, failed_s_ago=1)
    assert not set(fresh) & {c for c, _, _ in await hooks.due_again(pool, 5, 30, 1_000_000, skip=[down])}
