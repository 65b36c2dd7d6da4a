"""shared.db.accounts on the real Postgres: accounts with unique names, and the operator's
API keys: stored as digests only, found only while not revoked, and revoked only by their
own account."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest

from shared.db import accounts, audit
from shared.db.pool import Pool
from shared.domain.accounts import Account
from shared.errors import Conflict, Forbidden, InvalidInput, NotFound
from tests.support import registry

pytestmark = pytest.mark.integration


@pytest.fixture
async def account(pool: Pool, unique: str) -> tuple[Account, str]:
    """An account created by create_account, with its first key."""
    return await accounts.create_account(pool, f"acct-{unique}")


def _account_of(found: Account | None) -> Account | None:
    """The account a key found, without the key's own fields."""
    return None if found is None else Account(found.id, found.name)


async def test_create_account_issues_a_first_key_that_finds_the_account(
    pool: Pool, account: tuple[Account, str]
) -> None:
    created, key = account

    assert await accounts.find_account(pool, created.name) == created
    (first,) = await accounts.list_api_keys(pool, created.id)
    assert (first.label, first.prefix, first.revoked_at, first.read_only) == (
        "first key",
        key[:8],
        None,
        False,
    )
    # Found by its key, the account names the key that called and who it belongs to (for the
    # audit trail): the first key is the admin key of the service account "default".
    assert await accounts.account_for_key(pool, key) == Account(
        created.id,
        created.name,
        key_id=first.id,
        key_label="first key",
        role="admin",
        service_account="default",
    )
    assert (first.role, first.service_account, first.user_email) == ("admin", "default", None)
    assert await accounts.find_account(pool, f"{created.name}-other") is None


async def test_an_account_name_is_unique(pool: Pool, account: tuple[Account, str]) -> None:
    created, _ = account

    with pytest.raises(Conflict) as refused:
        await accounts.create_account(pool, created.name)

    assert refused.value.field == "name"
    assert await pool.fetchval("SELECT count(*) FROM accounts WHERE name = $1", created.name) == 1


async def test_only_a_digest_of_a_key_is_stored(pool: Pool, account: tuple[Account, str]) -> None:
    created, first = account
    issued = await accounts.create_api_key(pool, created, "deploy bot")

    assert issued.label == "deploy bot"
    assert (await accounts.account_for_key(pool, issued.key)) == Account(
        created.id, created.name, issued.id, "deploy bot", service_account="default"
    )
    row = await pool.fetchrow(
        "SELECT key_digest, key_prefix FROM api_keys WHERE id = $1", uuid.UUID(issued.id)
    )
    assert row is not None
    assert (bytes(row["key_digest"]), row["key_prefix"]) == (
        hashlib.sha256(issued.key.encode()).digest(),
        issued.key[:8],
    )
    for key in (first, issued.key):
        # Past its prefix, no column of any key row holds any of the key's text.
        assert (
            await pool.fetchval("SELECT count(*) FROM api_keys k WHERE position($1 IN k::text) > 0", key[8:])
            == 0
        )


async def test_a_revoked_unknown_or_non_ascii_key_finds_nothing(
    pool: Pool, account: tuple[Account, str]
) -> None:
    created, first = account
    kept = await accounts.create_api_key(pool, created, "kept")
    revoked = await accounts.create_api_key(pool, created, "revoked")

    await accounts.revoke_api_key(pool, created, revoked.id)

    assert await accounts.account_for_key(pool, revoked.key) is None
    assert _account_of(await accounts.account_for_key(pool, kept.key)) == created
    assert _account_of(await accounts.account_for_key(pool, first)) == created
    for text in ("", "frk_unknown", revoked.key.upper(), first + "é", "frk_ünïcode", "frk_\udcff", "frk_\0"):
        assert await accounts.account_for_key(pool, text) is None, text


async def test_list_api_keys_lists_the_accounts_keys_oldest_first(
    pool: Pool, account: tuple[Account, str], unique: str
) -> None:
    created, _ = account
    second = await accounts.create_api_key(pool, created, "second")
    third = await accounts.create_api_key(pool, created, "third")
    await accounts.revoke_api_key(pool, created, second.id)
    stranger, _ = await accounts.create_account(pool, f"stranger-{unique}")
    await accounts.create_api_key(pool, stranger, "the stranger's")

    keys = await accounts.list_api_keys(pool, created.id)

    assert [k.label for k in keys] == ["first key", "second", "third"]
    assert [k.id for k in keys[1:]] == [second.id, third.id]
    assert [k.prefix for k in keys[1:]] == [second.key[:8], third.key[:8]]
    assert keys[0].created_at <= keys[1].created_at <= keys[2].created_at
    assert keys[1].revoked_at is not None
    assert keys[1].revoked_at >= keys[1].created_at
    assert (keys[0].revoked_at, keys[2].revoked_at) == (None, None)
    assert [k.label for k in await accounts.list_api_keys(pool, stranger.id)] == [
        "first key",
        "the stranger's",
    ]


async def test_revoke_api_key_revokes_only_an_active_key_of_the_account(
    pool: Pool, account: tuple[Account, str], unique: str
) -> None:
    created, _ = account
    stranger, stranger_key = await accounts.create_account(pool, f"stranger-{unique}")
    (strangers,) = await accounts.list_api_keys(pool, stranger.id)
    mine = await accounts.create_api_key(pool, created, "mine")

    with pytest.raises(NotFound):
        await accounts.revoke_api_key(pool, created, strangers.id)
    assert _account_of(await accounts.account_for_key(pool, stranger_key)) == stranger
    assert (await accounts.list_api_keys(pool, stranger.id))[0].revoked_at is None

    for malformed in ("", "not-an-id", mine.id + "0", "\0", "é" * 36, str(uuid.uuid4())):
        with pytest.raises(NotFound):
            await accounts.revoke_api_key(pool, created, malformed)

    await accounts.revoke_api_key(pool, created, mine.id.upper())
    with pytest.raises(NotFound):
        await accounts.revoke_api_key(pool, created, mine.id)  # twice
    assert await accounts.account_for_key(pool, mine.key) is None


async def test_a_nul_in_a_label_is_refused(pool: Pool, account: tuple[Account, str]) -> None:
    created, _ = account

    with pytest.raises(InvalidInput) as refused:
        await accounts.create_api_key(pool, created, "bad\0label")

    assert (refused.value.field, refused.value.rule) == ("label", "charset=no-NUL")
    assert len(await accounts.list_api_keys(pool, created.id)) == 1
    assert (await accounts.create_api_key(pool, created, "ünïcode is fine")).label == "ünïcode is fine"


async def test_keys_never_cross_accounts(pool: Pool) -> None:
    """Two accounts made with plain SQL (tests.support.registry) and their keys."""
    one, two = await registry.new_account(pool), await registry.new_account(pool)
    key_one = await accounts.create_api_key(pool, Account(one, "one"), "one")
    key_two = await accounts.create_api_key(pool, Account(two, "two"), "two")

    found_one, found_two = (
        await accounts.account_for_key(pool, key_one.key),
        await accounts.account_for_key(pool, key_two.key),
    )

    assert found_one is not None and found_two is not None
    assert (found_one.id, found_two.id) == (one, two)
    assert [k.id for k in await accounts.list_api_keys(pool, one)] == [key_one.id]


async def test_a_read_only_key_finds_its_account_as_read_only_and_both_key_changes_are_audited(
    pool: Pool, account: tuple[Account, str]
) -> None:
    created, key = account
    actor = await accounts.account_for_key(pool, key)
    assert actor is not None

    issued = await accounts.create_api_key(pool, actor, "dashboard", read_only=True)
    found = await accounts.account_for_key(pool, issued.key)
    await accounts.revoke_api_key(pool, actor, issued.id)

    assert found is not None and (found.read_only, found.key_label, found.key_id) == (
        True,
        "dashboard",
        issued.id,
    )
    assert await accounts.account_for_key(pool, issued.key) is None
    trail = await audit.list_events(pool, created.id, audit.AuditFilter(target_id=issued.id), limit=10)
    assert [(e.action, e.api_key_id, e.api_key_label, e.changes) for e in trail] == [
        ("api_key.revoked", actor.key_id, "first key", {"label": "dashboard"}),
        (
            "api_key.created",
            actor.key_id,
            "first key",
            {"label": "dashboard", "role": "viewer", "read_only": True},
        ),
    ]
    assert issued.key not in str(trail)  # never the key itself


async def test_parallel_key_creations_never_pass_the_active_key_limit(
    pool: Pool, account: tuple[Account, str]
) -> None:
    created, key = account
    actor = await accounts.account_for_key(pool, key)
    assert actor is not None

    async def create(n: int) -> str:
        try:
            await accounts.create_api_key(pool, actor, f"k{n}", max_active=5)
            return "created"
        except Conflict as exc:
            assert exc.rule == "max_active_keys=5"
            return "refused"

    outcomes = await asyncio.gather(*(create(n) for n in range(12)))
    assert outcomes.count("created") == 4  # the first key plus four make five
    active = [k for k in await accounts.list_api_keys(pool, created.id) if k.revoked_at is None]
    assert len(active) == 5
    # a revoked key frees its place
    await accounts.revoke_api_key(pool, actor, active[-1].id)
    await accounts.create_api_key(pool, actor, "again", max_active=5)


async def test_a_key_carries_at_most_its_creators_role_and_belongs_to_its_creators_owner(
    pool: Pool, account: tuple[Account, str]
) -> None:
    created, key = account
    admin = await accounts.account_for_key(pool, key)
    assert admin is not None

    operator_key = await accounts.create_api_key(pool, admin, "ops", role="operator")
    operator = await accounts.account_for_key(pool, operator_key.key)
    assert operator is not None and (operator.role, operator.service_account) == ("operator", "default")
    with pytest.raises(Forbidden) as above:
        await accounts.create_api_key(pool, operator, "escalate", role="admin")
    with pytest.raises(Forbidden):
        await accounts.create_api_key(pool, admin, "never owner", role="owner")
    # By default a key carries its creator's role.
    assert (await accounts.create_api_key(pool, operator, "same")).role == "operator"

    assert above.value.field == "role" and "operator" in str(above.value)
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM api_keys WHERE account_id = $1 AND label IN ('escalate', 'never owner')",
            uuid.UUID(created.id),
        )
        == 0
    )
    (event,) = await audit.list_events(
        pool, created.id, audit.AuditFilter(target_id=operator_key.id), limit=10
    )
    assert (event.role, event.service_account, event.user_id) == ("admin", "default", None)
