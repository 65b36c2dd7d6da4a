"""shared.db.users and shared.db.service_accounts on the real Postgres: invitations (a
token kept as a digest, read without being consumed, accepted once, refused once expired by
the database's clock or revoked, one winner among parallel accepts), the last owner kept
under the account's lock (parallel demotions cannot both pass), the first owner of an
ownerless account, removal ending sessions and personal keys at once, and service accounts."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.db import accounts, service_accounts, users
from shared.db.pool import Pool
from shared.db.users import User
from shared.domain import people
from shared.domain.accounts import Account
from shared.errors import Conflict, Forbidden, NotFound

pytestmark = pytest.mark.integration

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"  # a stand-in PHC string


@pytest.fixture
async def admin(pool: Pool, unique: str) -> Account:
    """A new account's first key, as the API sees it (an admin key of service account 'default')."""
    _, key = await accounts.create_account(pool, f"people-{unique}")
    found = await accounts.account_for_key(pool, key)
    assert found is not None
    return found


def _email(unique: str, name: str) -> str:
    return f"{name}.{unique}@example.com"


def _as(account: Account, user: User) -> Account:
    """The person, acting through a console session (no key)."""
    return Account(
        account.id,
        account.name,
        role=user.role,
        user_id=user.id,
        user_email=user.email,
        session_id=str(uuid.uuid4()),
    )


async def _join(pool: Pool, actor: Account, email: str, role: str) -> User:
    issued = await users.invite(pool, actor, email, role, 72)
    return await users.accept(pool, issued.token, password_hash=HASH)


async def test_an_invitation_is_read_without_being_consumed_and_accepted_once(
    pool: Pool, admin: Account, unique: str
) -> None:
    email = _email(unique, "Ada").replace("example.com", "EXAMPLE.com")
    before = datetime.now(UTC)
    issued = await users.invite(pool, admin, people.checked_email(email), "operator", 72)
    invitation = issued.invitation
    assert invitation.email == _email(unique, "Ada")
    assert (invitation.role, invitation.account_id, invitation.invited_by_key_label) == (
        "operator",
        admin.id,
        "first key",
    )
    assert timedelta(hours=71) < invitation.expires_at - before < timedelta(hours=73)
    # Only the digest is stored.
    stored = await pool.fetchval(
        "SELECT token_digest FROM invitations WHERE id = $1", uuid.UUID(invitation.id)
    )
    assert stored == people.invitation_digest(issued.token) and issued.token.encode() not in stored

    for _ in range(2):  # reading (the console's GET) consumes nothing
        assert await users.invitation_for(pool, issued.token) == invitation
    assert [i.id for i in await users.list_invitations(pool, admin.id)] == [invitation.id]

    user = await users.accept(pool, issued.token, password_hash=HASH)
    assert (user.email, user.role, user.account_id, user.has_password, user.sso_linked) == (
        invitation.email,
        "operator",
        admin.id,
        True,
        False,
    )
    assert [u.id for u in await users.list_users(pool, admin.id)] == [user.id]
    assert await users.list_invitations(pool, admin.id) == []
    assert await users.invitation_for(pool, issued.token) is None
    with pytest.raises(NotFound):
        await users.accept(pool, issued.token, sso_subject="someone-else")
    with pytest.raises(NotFound):
        await users.accept(pool, "not-a-token", password_hash=HASH)
    with pytest.raises(ValueError, match="one of the two"):
        await users.accept(pool, issued.token)


async def test_an_invitation_expires_by_the_database_clock_and_a_revoked_one_is_refused(
    pool: Pool, admin: Account, unique: str
) -> None:
    expired = await users.invite(pool, admin, _email(unique, "late"), "viewer", 1)
    await pool.execute(
        "UPDATE invitations SET expires_at = now() WHERE id = $1", uuid.UUID(expired.invitation.id)
    )
    assert await users.invitation_for(pool, expired.token) is None
    with pytest.raises(NotFound):
        await users.accept(pool, expired.token, password_hash=HASH)

    revoked = await users.invite(pool, admin, _email(unique, "gone"), "viewer", 1)
    await users.revoke_invitation(pool, admin, revoked.invitation.id)
    assert await users.invitation_for(pool, revoked.token) is None
    with pytest.raises(NotFound):
        await users.accept(pool, revoked.token, password_hash=HASH)
    with pytest.raises(NotFound):  # twice
        await users.revoke_invitation(pool, admin, revoked.invitation.id)
    assert await users.list_users(pool, admin.id) == []


async def test_of_parallel_accepts_of_one_link_exactly_one_wins(
    pool: Pool, admin: Account, unique: str
) -> None:
    issued = await users.invite(pool, admin, _email(unique, "race"), "admin", 72)
    results = await asyncio.gather(
        *(users.accept(pool, issued.token, password_hash=HASH) for _ in range(8)), return_exceptions=True
    )
    won = [r for r in results if isinstance(r, User)]
    assert len(won) == 1, results
    assert all(isinstance(r, NotFound) for r in results if not isinstance(r, User)), results
    assert [u.id for u in await users.list_users(pool, admin.id)] == [won[0].id]


async def test_a_new_invitation_replaces_the_open_one_and_an_address_is_one_user(
    pool: Pool, admin: Account, unique: str
) -> None:
    email = _email(unique, "twice")
    first = await users.invite(pool, admin, email, "viewer", 72)
    second = await users.invite(pool, admin, email.upper().replace("EXAMPLE.COM", "example.com"), "admin", 72)
    assert [i.id for i in await users.list_invitations(pool, admin.id)] == [second.invitation.id]
    with pytest.raises(NotFound):
        await users.accept(pool, first.token, password_hash=HASH)
    await users.accept(pool, second.token, password_hash=HASH)
    with pytest.raises(Conflict):  # the address is a user's now, in any account
        await users.invite(pool, admin, email, "viewer", 72)
    _, other_key = await accounts.create_account(pool, f"other-{unique}")
    other = await accounts.account_for_key(pool, other_key)
    assert other is not None
    with pytest.raises(Conflict):
        await users.invite(pool, other, email.upper(), "viewer", 72)


async def test_an_admin_makes_the_first_owner_then_only_an_owner_grants_owner(
    pool: Pool, admin: Account, unique: str
) -> None:
    # An ownerless account: an admin's owner invitation is the first owner's.
    early = await users.invite(pool, admin, _email(unique, "early"), "owner", 72)
    late = await users.invite(pool, admin, _email(unique, "late"), "owner", 72)
    owner = await users.accept(pool, early.token, password_hash=HASH)
    assert owner.role == "owner"
    # Now it has one: the admin's other owner invitation is refused at acceptance, unconsumed.
    with pytest.raises(Conflict) as refused:
        await users.accept(pool, late.token, password_hash=HASH)
    assert refused.value.rule == "first-owner"
    assert await users.invitation_for(pool, late.token) is not None
    with pytest.raises(Forbidden):
        await users.invite(pool, admin, _email(unique, "third"), "owner", 72)
    # An owner invites an owner.
    issued = await users.invite(pool, _as(admin, owner), _email(unique, "co"), "owner", 72)
    assert issued.invitation.invited_by_email == owner.email
    co = await users.accept(pool, issued.token, sso_subject=f"sub-{unique}")
    assert (co.role, co.sso_linked, co.has_password) == ("owner", True, False)
    # An admin changes or removes no owner, nor makes one; nobody changes their own role.
    with pytest.raises(Forbidden):
        await users.change_role(pool, admin, co.id, "admin")
    with pytest.raises(Forbidden):
        await users.remove_user(pool, admin, co.id)
    with pytest.raises(Forbidden):
        await users.change_role(pool, _as(admin, co), co.id, "admin")
    helper = await _join(pool, admin, _email(unique, "helper"), "operator")
    with pytest.raises(Forbidden):
        await users.change_role(pool, admin, helper.id, "owner")
    assert (await users.change_role(pool, admin, helper.id, "admin")).role == "admin"
    with pytest.raises(Forbidden):
        await users.remove_user(pool, _as(admin, await _user(pool, admin, helper.id)), helper.id)


async def _user(pool: Pool, account: Account, user_id: str) -> User:
    return next(u for u in await users.list_users(pool, account.id) if u.id == user_id)


async def test_the_last_owner_is_neither_demoted_nor_removed_even_in_parallel(
    pool: Pool, admin: Account, unique: str
) -> None:
    first = await _join(pool, admin, _email(unique, "one"), "owner")
    second = await users.accept(
        pool,
        (await users.invite(pool, _as(admin, first), _email(unique, "two"), "owner", 72)).token,
        password_hash=HASH,
    )
    # Each owner demotes the other at once: one passes, the other finds the last owner.
    results = await asyncio.gather(
        users.change_role(pool, _as(admin, first), second.id, "admin"),
        users.change_role(pool, _as(admin, second), first.id, "admin"),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "User"], results
    refused = next(r for r in results if isinstance(r, Conflict))
    assert refused.rule == "last-owner"
    owners = [u for u in await users.list_users(pool, admin.id) if u.role == "owner"]
    assert len(owners) == 1
    [last] = owners
    demoted = await _user(pool, admin, (second if last.id == first.id else first).id)
    assert demoted.role == "admin"
    with pytest.raises(Forbidden):  # an admin removes no owner, and nobody removes themselves
        await users.remove_user(pool, _as(admin, demoted), last.id)
    with pytest.raises(Forbidden):
        await users.remove_user(pool, _as(admin, last), last.id)
    # Removing in parallel with a demotion: one of the two owners stays, whatever the order.
    third = await users.accept(
        pool,
        (await users.invite(pool, _as(admin, last), _email(unique, "three"), "owner", 72)).token,
        password_hash=HASH,
    )
    results = await asyncio.gather(
        users.remove_user(pool, _as(admin, last), third.id),
        users.remove_user(pool, _as(admin, third), last.id),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "Removal"], results
    assert len([u for u in await users.list_users(pool, admin.id) if u.role == "owner"]) == 1


async def test_removal_ends_sessions_and_personal_keys_in_its_transaction(
    pool: Pool, admin: Account, unique: str
) -> None:
    person = await _join(pool, admin, _email(unique, "leaver"), "admin")
    # A personal key made through the person's console session, then one made by that key.
    issued = await accounts.create_api_key(pool, _as(admin, person), "laptop")
    by_key = await accounts.account_for_key(pool, issued.key)
    assert by_key is not None
    assert (by_key.user_id, by_key.user_email, by_key.role, by_key.service_account) == (
        person.id,
        person.email,
        "admin",
        None,
    )
    second = await accounts.create_api_key(pool, by_key, "ci", role="operator")
    keys = {k.label: k for k in await accounts.list_api_keys(pool, admin.id)}
    assert keys["laptop"].user_email == keys["ci"].user_email == person.email
    await pool.execute(
        """INSERT INTO console_sessions (digest, account_id, user_id, data, expires_at)
           VALUES ($1, $2, $3, '{}'::jsonb, now() + interval '1 hour')""",
        uuid.uuid4().bytes,
        uuid.UUID(admin.id),
        uuid.UUID(person.id),
    )
    # Demoted first: the keys above the new role come down to it.
    await users.change_role(pool, admin, person.id, "operator")
    lowered = await accounts.account_for_key(pool, issued.key)
    assert lowered is not None and lowered.role == "operator"

    removal = await users.remove_user(pool, admin, person.id)
    assert (removal.api_keys_revoked, removal.sessions_ended) == (2, 1)
    assert await accounts.account_for_key(pool, issued.key) is None
    assert await accounts.account_for_key(pool, second.key) is None
    assert (
        await pool.fetchval("SELECT count(*) FROM console_sessions WHERE user_id = $1", uuid.UUID(person.id))
        == 0
    )
    row = await pool.fetchrow(
        "SELECT password_hash, removed_at FROM users WHERE id = $1", uuid.UUID(person.id)
    )
    assert row["password_hash"] is None and row["removed_at"] is not None
    assert await users.list_users(pool, admin.id) == []
    with pytest.raises(NotFound):  # a removed person makes no key
        await accounts.create_api_key(pool, _as(admin, person), "after")
    with pytest.raises(NotFound):
        await users.remove_user(pool, admin, person.id)
    # The address is free again.
    again = await _join(pool, admin, person.email, "viewer")
    assert again.id != person.id


async def test_another_accounts_people_are_not_found(pool: Pool, admin: Account, unique: str) -> None:
    person = await _join(pool, admin, _email(unique, "mine"), "viewer")
    invitation = await users.invite(pool, admin, _email(unique, "invited"), "viewer", 72)
    _, other_key = await accounts.create_account(pool, f"stranger-{unique}")
    stranger = await accounts.account_for_key(pool, other_key)
    assert stranger is not None
    with pytest.raises(NotFound):
        await users.change_role(pool, stranger, person.id, "admin")
    with pytest.raises(NotFound):
        await users.remove_user(pool, stranger, person.id)
    with pytest.raises(NotFound):
        await users.revoke_invitation(pool, stranger, invitation.invitation.id)
    with pytest.raises(NotFound):
        await users.change_role(pool, stranger, "not-an-id", "admin")
    assert await users.list_users(pool, stranger.id) == []
    assert await users.list_invitations(pool, stranger.id) == []


async def test_service_accounts_and_their_keys(pool: Pool, admin: Account, unique: str) -> None:
    [default] = await service_accounts.list_service_accounts(pool, admin.id)
    assert (default.name, default.role, default.active_api_keys) == ("default", "admin", 1)
    ci = await service_accounts.create_service_account(pool, admin, "ci", "operator")
    with pytest.raises(Conflict):
        await service_accounts.create_service_account(pool, admin, "ci", "viewer")
    issued, name = await service_accounts.create_key(pool, admin, ci.id, "deploys", None)
    assert (issued.role, name) == ("operator", "ci")
    with pytest.raises(Forbidden):  # above the service account's role
        await service_accounts.create_key(pool, admin, ci.id, "more", "admin")
    viewer, _ = await service_accounts.create_key(pool, admin, ci.id, "watch", "viewer")
    found = await accounts.account_for_key(pool, issued.key)
    assert found is not None and (found.service_account, found.role, found.user_id) == (
        "ci",
        "operator",
        None,
    )
    # Below admin, a key sees and revokes only its service account's keys of its role or lower.
    assert {k.label for k in await accounts.list_api_keys(pool, admin.id, owned_by=found)} == {
        "deploys",
        "watch",
    }
    watcher = await accounts.account_for_key(pool, viewer.key)
    assert watcher is not None
    assert [k.label for k in await accounts.list_api_keys(pool, admin.id, owned_by=watcher)] == ["watch"]
    with pytest.raises(Forbidden) as refused:
        await accounts.revoke_api_key(pool, watcher, issued.id)
    assert refused.value.rule == "scope=read-only"
    with pytest.raises(Forbidden):
        await accounts.revoke_api_key(pool, found, admin.key_id or "")
    await accounts.revoke_api_key(pool, watcher, viewer.id)  # its own
    assert await accounts.account_for_key(pool, viewer.key) is None

    assert await service_accounts.remove_service_account(pool, admin, ci.id) == 1
    assert await accounts.account_for_key(pool, issued.key) is None
    with pytest.raises(NotFound):
        await service_accounts.create_key(pool, admin, ci.id, "late", None)
    with pytest.raises(NotFound):
        await service_accounts.remove_service_account(pool, admin, ci.id)
    assert [s.name for s in await service_accounts.list_service_accounts(pool, admin.id)] == ["default"]
    # The name is free again once removed.
    assert (await service_accounts.create_service_account(pool, admin, "ci", "viewer")).role == "viewer"
