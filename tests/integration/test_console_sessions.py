"""Console sessions on the real Postgres (migration 0016): found by the digest of their
token only while unexpired and while their key is active, created only at sign-in (an
update never moves, extends or revives one), and pruned once expired."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from services.operator.handlers.trail import prune_expired
from services.operator.settings import RetentionSettings
from shared.db import accounts, console_sessions
from shared.db.pool import Pool
from shared.domain.accounts import Account

pytestmark = pytest.mark.integration


@pytest.fixture
async def account(pool: Pool, unique: str) -> tuple[Account, str]:
    return await accounts.create_account(pool, f"console-{unique}")


async def _key_id(pool: Pool, key: str) -> str:
    found = await accounts.account_for_key(pool, key)
    assert found is not None and found.key_id is not None
    return found.key_id


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def test_a_session_is_found_by_its_digest_and_only_the_digest_is_stored(
    pool: Pool, account: tuple[Account, str], unique: str
) -> None:
    created, key = account
    key_id = await _key_id(pool, key)
    token = f"token-{unique}"
    data = json.dumps({"created": 1, "session": {"key_id": key_id}})

    await console_sessions.create(
        pool, _digest(token), created.id, key_id, data, datetime.now(UTC) + timedelta(hours=1)
    )

    assert json.loads(await console_sessions.load(pool, _digest(token)) or "{}") == json.loads(data)
    assert await console_sessions.load(pool, _digest(token + "x")) is None
    stored = await pool.fetchval("SELECT count(*) FROM console_sessions WHERE digest = $1", token.encode())
    assert stored == 0  # the token itself is nowhere


async def test_revoking_the_key_or_expiry_makes_the_session_unfindable(
    pool: Pool, account: tuple[Account, str], unique: str
) -> None:
    created, key = account
    key_id = await _key_id(pool, key)
    live, expired = _digest(f"live-{unique}"), _digest(f"expired-{unique}")
    now = datetime.now(UTC)
    await console_sessions.create(pool, live, created.id, key_id, "{}", now + timedelta(hours=1))
    await console_sessions.create(pool, expired, created.id, key_id, "{}", now - timedelta(seconds=1))

    assert await console_sessions.load(pool, live) == "{}"
    assert await console_sessions.load(pool, expired) is None

    await accounts.revoke_api_key(pool, Account(created.id, created.name, key_id=key_id), key_id)
    assert await console_sessions.load(pool, live) is None
    assert await accounts.account_for_key_id(pool, key_id) is None


async def test_an_update_changes_only_the_data_and_never_brings_an_ended_session_back(
    pool: Pool, account: tuple[Account, str], unique: str
) -> None:
    """Found by an outsider attack: a request that loaded the session before sign-out saved
    it again afterwards (an upsert), and the signed-out cookie worked again."""
    created, key = account
    key_id = await _key_id(pool, key)
    digest = _digest(f"fixed-{unique}")
    expires = datetime.now(UTC) + timedelta(minutes=5)
    await console_sessions.create(pool, digest, created.id, key_id, '{"n": 1}', expires)

    assert await console_sessions.update(pool, digest, '{"n": 2}')
    row = await pool.fetchrow(
        "SELECT key_id::text, data, expires_at FROM console_sessions WHERE digest = $1", digest
    )
    assert row is not None
    assert (row["key_id"], json.loads(row["data"]), row["expires_at"]) == (key_id, {"n": 2}, expires)

    await console_sessions.delete(pool, digest)  # signed out
    assert not await console_sessions.update(pool, digest, '{"n": 3}')  # the late save of an old request
    assert await console_sessions.load(pool, digest) is None
    assert not await console_sessions.update(pool, _digest(f"never-{unique}"), "{}")


async def test_expired_sessions_are_pruned_and_live_ones_kept(
    pool: Pool, account: tuple[Account, str], unique: str
) -> None:
    created, key = account
    key_id = await _key_id(pool, key)
    now = datetime.now(UTC)
    live, expired = _digest(f"keep-{unique}"), _digest(f"prune-{unique}")
    await console_sessions.create(pool, live, created.id, key_id, "{}", now + timedelta(hours=1))
    await console_sessions.create(pool, expired, created.id, key_id, "{}", now - timedelta(minutes=1))

    deleted = await prune_expired(pool, RetentionSettings(decisions_days=0, audit_days=0))

    assert deleted["console_sessions"] >= 1
    left = await pool.fetch("SELECT digest FROM console_sessions WHERE digest = ANY($1)", [live, expired])
    assert [r["digest"] for r in left] == [live]
