"""Who single sign-on signs in (shared.db.users.sign_in_through_sso) on the real Postgres:
a person made just in time with the role the provider's groups map to, the role following
the groups at each sign-in (keys lowered with it), an owner kept, and the refusals: no group,
another account's address, another subject at the provider."""

from __future__ import annotations

import uuid

import pytest

from shared.db import accounts, audit
from shared.db.pool import Pool
from shared.db.users import sign_in_through_sso
from shared.domain.accounts import Account
from shared.domain.roles import Role
from shared.errors import Forbidden
from tests.support import registry

pytestmark = pytest.mark.integration


def _email() -> str:
    return f"sso.{uuid.uuid4().hex[:8]}@example.com"


async def test_a_person_joins_just_in_time_and_the_role_follows_the_groups(pool: Pool) -> None:
    account_id = await registry.new_account(pool)
    email = _email()

    joined = await sign_in_through_sso(pool, account_id, email, "sub-1", Role.ADMIN)
    person = Account(account_id, "a", role=joined.user.role, user_id=joined.user.id, user_email=email)
    key = await accounts.create_api_key(pool, person, "laptop")
    again = await sign_in_through_sso(pool, account_id, email.upper(), "sub-1", Role.ADMIN)
    demoted = await sign_in_through_sso(pool, account_id, email, "sub-1", Role.VIEWER)

    assert (joined.joined, joined.user.role, joined.user.sso_linked) == (True, "admin", True)
    assert (again.joined, again.role_was, again.user.id) == (False, None, joined.user.id)
    assert (demoted.user.role, demoted.role_was) == ("viewer", "admin")
    found = await accounts.account_for_key(pool, key.key)
    assert found is not None and (found.role, found.user_email) == ("viewer", email)  # the key lowered too
    trail = await audit.list_events(pool, account_id, audit.AuditFilter(target_id=joined.user.id), limit=5)
    assert [(e.action, e.user_email) for e in trail] == [("user.role_changed", email), ("user.joined", email)]
    assert trail[1].changes["sign_in"] == "sso" and trail[0].changes["by"] == "sso groups"


async def test_no_group_no_entry_but_an_owner_stays_an_owner(pool: Pool) -> None:
    account_id = await registry.new_account(pool)
    nobody, member, owner = _email(), _email(), _email()
    await sign_in_through_sso(pool, account_id, member, "sub-m", Role.OPERATOR)
    await sign_in_through_sso(pool, account_id, owner, "sub-o", Role.OPERATOR)
    await pool.execute("UPDATE users SET role = 'owner' WHERE lower(email) = lower($1)", owner)

    with pytest.raises(Forbidden):
        await sign_in_through_sso(pool, account_id, nobody, "sub-n", None)
    with pytest.raises(Forbidden):
        await sign_in_through_sso(pool, account_id, member, "sub-m", None)
    kept = await sign_in_through_sso(pool, account_id, owner, "sub-o", None)

    assert kept.user.role == "owner"
    roles = dict(
        await pool.fetch("SELECT email, role FROM users WHERE account_id = $1", uuid.UUID(account_id))
    )
    assert roles == {member: "operator", owner: "owner"}  # nobody was not made; member kept


async def test_another_accounts_address_or_another_subject_is_refused_alike(pool: Pool) -> None:
    one, two = await registry.new_account(pool), await registry.new_account(pool)
    email = _email()
    await sign_in_through_sso(pool, one, email, "sub-1", Role.OPERATOR)

    with pytest.raises(Forbidden) as elsewhere:
        await sign_in_through_sso(pool, two, email, "sub-1", Role.ADMIN)
    with pytest.raises(Forbidden) as other_subject:
        await sign_in_through_sso(pool, one, email, "sub-2", Role.ADMIN)

    assert str(elsewhere.value) == str(other_subject.value)  # the same words: no oracle of accounts
    assert await pool.fetchval("SELECT role FROM users WHERE lower(email) = lower($1)", email) == "operator"
