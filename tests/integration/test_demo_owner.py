"""``make up`` invites the demo account's first owner while it has no person (cli/endpoints.py):
the same link while its invitation is open, a new one once it is not, none once the owner joined."""

from __future__ import annotations

import uuid

import pytest

from cli.endpoints import _invite_owner
from shared.db import users
from shared.db.pool import Pool
from shared.domain.accounts import Account
from tests.support import registry

pytestmark = pytest.mark.integration

URL = "http://127.0.0.1:18081"


async def test_the_owner_is_invited_once_until_the_link_is_used(pool: Pool) -> None:
    account = Account(await registry.new_account(pool), "demo-owner-test")
    email = f"owner.{uuid.uuid4().hex[:8]}@demo.example.com"  # not the demo's own: it may exist here

    first = await _invite_owner(pool, account, None, URL, email)
    kept = await _invite_owner(pool, account, first, URL, email)
    assert first is not None and first.startswith(f"{URL}/console/invitations/") and kept == first
    await pool.execute("UPDATE invitations SET expires_at = now() WHERE account_id = $1::uuid", account.id)
    renewed = await _invite_owner(pool, account, first, URL, email)
    assert renewed is not None and renewed != first

    joined = await users.accept(
        pool, renewed.rsplit("/", 1)[-1], password_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"
    )
    assert (joined.email, joined.role) == (email, "owner")
    assert await _invite_owner(pool, account, renewed, URL, email) is None
