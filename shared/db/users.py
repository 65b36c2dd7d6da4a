"""An account's people (issue 28): users with a role, and their invitations.

Every change to who holds which role takes the account's row lock first (``FOR UPDATE``),
so that the rules reading the account's owners (the last owner; an account without an
owner letting an admin make its first) see every other change committed: two parallel
demotions of the account's two owners cannot both pass. Accepting an invitation takes the
same lock, then consumes the invitation with one conditional UPDATE: of two parallel
accepts of one link exactly one wins. Times (an invitation's expiry) are the database's.

A removed user's row stays for the audit trail, with its credentials erased; their console
sessions are deleted and their personal keys revoked in the removing transaction, and the
key and session lookups refuse a removed user besides (shared/db/accounts.py,
shared/db/console_sessions.py), so their next request on any instance is refused.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db import audit
from shared.db.pool import Connection, Pool
from shared.domain import people
from shared.domain.accounts import Account
from shared.domain.roles import Role
from shared.errors import Conflict, NotFound

LOCK_ACCOUNT = "SELECT name FROM accounts WHERE id = $1 FOR UPDATE"
HAS_OWNER = """SELECT EXISTS (SELECT 1 FROM users
                              WHERE account_id = $1 AND role = 'owner' AND removed_at IS NULL)"""
COUNT_OWNERS = "SELECT count(*) FROM users WHERE account_id = $1 AND role = 'owner' AND removed_at IS NULL"
EMAIL_TAKEN = "SELECT EXISTS (SELECT 1 FROM users WHERE lower(email) = lower($1) AND removed_at IS NULL)"
_USER = """SELECT id::text, account_id::text, email, role, created_at, totp_sealed IS NOT NULL AS totp,
                  sso_subject IS NOT NULL AS sso, password_hash IS NOT NULL AS password
           FROM users"""
SELECT_USERS = _USER + " WHERE account_id = $1 AND removed_at IS NULL ORDER BY created_at, id"
SELECT_USER_FOR_UPDATE = _USER + " WHERE id = $1 AND account_id = $2 AND removed_at IS NULL FOR UPDATE"
INSERT_USER = """INSERT INTO users (id, account_id, email, role, password_hash, sso_subject)
                 VALUES ($1, $2, $3, $4, $5, $6)"""
UPDATE_ROLE = "UPDATE users SET role = $2 WHERE id = $1"
# A person's keys never carry more than the person's role: a demotion lowers them.
CAP_KEYS = """UPDATE api_keys SET role = $2
              WHERE user_id = $1 AND revoked_at IS NULL AND role = ANY($3::text[])"""
REMOVE_USER = """UPDATE users SET removed_at = now(), password_hash = NULL, totp_sealed = NULL,
                                  totp_last_step = NULL, sso_subject = NULL
                 WHERE id = $1"""
DELETE_RECOVERY_CODES = "DELETE FROM user_recovery_codes WHERE user_id = $1"
END_SESSIONS = "DELETE FROM console_sessions WHERE user_id = $1"
REVOKE_PERSONAL_KEYS = "UPDATE api_keys SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL"

_INVITATION = """SELECT i.id::text, i.account_id::text, a.name AS account_name, i.email, i.role,
                        i.created_at, i.expires_at, u.email AS invited_by_email,
                        k.label AS invited_by_key_label
                 FROM invitations i JOIN accounts a ON a.id = i.account_id
                 LEFT JOIN users u ON u.id = i.invited_by_user_id
                 LEFT JOIN api_keys k ON k.id = i.invited_by_key_id"""
_OPEN = "i.consumed_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > now()"
SELECT_OPEN_INVITATIONS = _INVITATION + f" WHERE i.account_id = $1 AND {_OPEN} ORDER BY i.created_at, i.id"
SELECT_INVITATION_BY_ID = _INVITATION + " WHERE i.id = $1"
SELECT_INVITATION_BY_TOKEN = _INVITATION + f" WHERE i.token_digest = $1 AND {_OPEN}"
INSERT_INVITATION = """INSERT INTO invitations (id, account_id, token_digest, email, role, invited_by_user_id,
                                                invited_by_key_id, expires_at)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(hours => $8))"""
# An open invitation of the same address in the account is replaced by a new one: the inviter
# meant the new role and expiry, and the earlier link must not stay usable beside it.
REPLACE_OPEN = """UPDATE invitations i SET revoked_at = now()
                  WHERE i.account_id = $1 AND lower(i.email) = lower($2)
                    AND i.consumed_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > now()
                  RETURNING i.id::text, i.role"""
REVOKE_INVITATION = """UPDATE invitations SET revoked_at = now()
                       WHERE id = $1 AND account_id = $2 AND consumed_at IS NULL AND revoked_at IS NULL
                       RETURNING email, role"""
ACCOUNT_OF_INVITATION = "SELECT account_id FROM invitations WHERE token_digest = $1"
CONSUME = """UPDATE invitations i SET consumed_at = now()
              WHERE i.token_digest = $1 AND i.consumed_at IS NULL AND i.revoked_at IS NULL
                AND i.expires_at > now()
              RETURNING i.id, i.email, i.role, i.invited_by_user_id"""
SET_CONSUMED_BY = "UPDATE invitations SET consumed_by = $2 WHERE id = $1"
# An owner invitation is honoured only while the account has no owner (an admin's invitation
# of the first owner), or when an owner invited and still is one.
INVITER_IS_OWNER = (
    "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND role = 'owner' AND removed_at IS NULL)"
)


@dataclass(frozen=True)
class User:
    """A person of an account (not removed), and how they sign in."""

    id: str
    account_id: str
    email: str
    role: str
    created_at: datetime
    totp_enrolled: bool = False
    sso_linked: bool = False
    has_password: bool = False


@dataclass(frozen=True)
class Invitation:
    """An invitation, never its token: who to (``email``, ``role``), until when, by whom
    (the inviting person's e-mail, or the inviting key's label)."""

    id: str
    account_id: str
    account_name: str
    email: str
    role: str
    created_at: datetime
    expires_at: datetime
    invited_by_email: str | None = None
    invited_by_key_label: str | None = None


@dataclass(frozen=True)
class IssuedInvitation:
    """An invitation just made: its token exists in clear only here, once."""

    invitation: Invitation
    token: str


@dataclass(frozen=True)
class Removal:
    """A removed person, and what ended with them."""

    user: User
    api_keys_revoked: int
    sessions_ended: int


def _user(row: asyncpg.Record) -> User:
    return User(
        id=row["id"],
        account_id=row["account_id"],
        email=row["email"],
        role=row["role"],
        created_at=row["created_at"],
        totp_enrolled=row["totp"],
        sso_linked=row["sso"],
        has_password=row["password"],
    )


def _invitation(row: asyncpg.Record) -> Invitation:
    return Invitation(
        id=row["id"],
        account_id=row["account_id"],
        account_name=row["account_name"],
        email=row["email"],
        role=row["role"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        invited_by_email=row["invited_by_email"],
        invited_by_key_label=row["invited_by_key_label"],
    )


def _uuid(value: str, what: str) -> uuid.UUID:
    try:  # parsed here, so the driver never refuses a caller's text with its value in the error
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"no {what} {value[:64]!r} in this account") from None


async def _one(conn: Connection, query: str, *args: object) -> asyncpg.Record:
    """The row a statement must find: one this transaction has just written."""
    row = await conn.fetchrow(query, *args)
    if row is None:
        raise RuntimeError("a row written in this transaction was not found")
    return row


async def _lock(conn: Connection, account_id: str) -> bool:
    """The account's row lock, held to the end of the transaction; whether it has an owner."""
    if await conn.fetchval(LOCK_ACCOUNT, account_id) is None:
        raise NotFound("no such account")
    return bool(await conn.fetchval(HAS_OWNER, account_id))


async def invite(pool: Pool, actor: Account, email: str, role: str, hours: int) -> IssuedInvitation:
    """An invitation of ``email`` (checked by shared.domain.people.checked_email) as ``role``
    into the actor's account, valid ``hours`` from now (the database's clock); its token is
    returned this once. Forbidden when the actor may not grant the role
    (people.check_may_grant); Conflict when a user (of any account, not removed) has the
    address. An open invitation of the same address in the account is replaced (revoked,
    audited ``invitation.revoked`` with ``replaced_by``). Audited ``user.invited``."""
    token = people.new_invitation_token()
    invitation_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        people.check_may_grant(actor.role, role, account_has_owner=await _lock(conn, actor.id))
        if await conn.fetchval(EMAIL_TAKEN, email):
            raise Conflict(f"a user with the e-mail address {email} exists already", field="email")
        for replaced in await conn.fetch(REPLACE_OPEN, actor.id, email):
            changes = {"email": email, "role": replaced["role"], "replaced_by": str(invitation_id)}
            await audit.record(conn, actor, "invitation.revoked", "invitation", replaced["id"], changes)
        await conn.execute(
            INSERT_INVITATION,
            invitation_id,
            actor.id,
            people.invitation_digest(token),
            email,
            role,
            uuid.UUID(actor.user_id) if actor.user_id else None,
            uuid.UUID(actor.key_id) if actor.key_id else None,
            hours,
        )
        invitation = _invitation(await _one(conn, SELECT_INVITATION_BY_ID, invitation_id))
        changes = {"email": email, "role": role, "expires_at": invitation.expires_at}
        await audit.record(conn, actor, "user.invited", "invitation", str(invitation_id), changes)
    return IssuedInvitation(invitation, token)


async def list_users(pool: Pool, account_id: str) -> list[User]:
    """The account's users (not removed), oldest first."""
    return [_user(r) for r in await pool.fetch(SELECT_USERS, account_id)]


async def list_invitations(pool: Pool, account_id: str) -> list[Invitation]:
    """The account's open invitations (neither accepted, revoked nor expired), oldest first."""
    return [_invitation(r) for r in await pool.fetch(SELECT_OPEN_INVITATIONS, account_id)]


async def invitation_for(pool: Pool, token: str) -> Invitation | None:
    """The open invitation of a link's token, or None (unknown, accepted, revoked or
    expired); reading it consumes nothing (the console's page of the link)."""
    row = await pool.fetchrow(SELECT_INVITATION_BY_TOKEN, people.invitation_digest(token))
    return None if row is None else _invitation(row)


def invitation_gone() -> NotFound:
    """The refusal of a link whose invitation is not open: the same whatever the reason."""
    return NotFound("no open invitation for this link: it was accepted, revoked or has expired")


async def accept(
    pool: Pool, token: str, *, password_hash: str | None = None, sso_subject: str | None = None
) -> User:
    """The user an open invitation makes, signing in with ``password_hash`` (a PHC string,
    shared/domain/passwords.py) or through single sign-on as ``sso_subject``: exactly one
    (ValueError otherwise: the caller's mistake, not input). The invitation is consumed in
    the same transaction (of parallel accepts, one wins). NotFound for a token of no open
    invitation (unknown, used, revoked, expired); Conflict when a user has the address by
    now, or for an owner invitation an admin made while the account had no owner once it
    has one (nothing is consumed then). Audited ``user.joined``, by the new user."""
    if (password_hash is None) == (sso_subject is None):
        raise ValueError("accept takes a password hash or an SSO subject, one of the two")
    digest = people.invitation_digest(token)
    gone = invitation_gone()
    async with pool.acquire() as conn, conn.transaction():
        account_id = await conn.fetchval(ACCOUNT_OF_INVITATION, digest)
        if account_id is None:
            raise gone
        account_name = await conn.fetchval(LOCK_ACCOUNT, account_id)
        has_owner = bool(await conn.fetchval(HAS_OWNER, account_id))
        row = await conn.fetchrow(CONSUME, digest)
        if row is None:
            raise gone
        if row["role"] == Role.OWNER and has_owner:
            inviter = row["invited_by_user_id"]
            if inviter is None or not await conn.fetchval(INVITER_IS_OWNER, inviter):
                raise Conflict(
                    "this owner invitation was for the account's first owner, and it has one now: "
                    "ask an owner to invite you",
                    rule="first-owner",
                )
        if await conn.fetchval(EMAIL_TAKEN, row["email"]):
            raise Conflict(f"a user with the e-mail address {row['email']} exists already", field="email")
        user_id = uuid.uuid4()
        try:
            await conn.execute(
                INSERT_USER, user_id, account_id, row["email"], row["role"], password_hash, sso_subject
            )
        except asyncpg.UniqueViolationError as exc:  # the same address accepted in another account
            raise Conflict(f"a user with the e-mail address {row['email']} exists already") from exc
        await conn.execute(SET_CONSUMED_BY, row["id"], user_id)
        user = _user(await _one(conn, SELECT_USER_FOR_UPDATE, user_id, account_id))
        newcomer = Account(
            str(account_id), account_name, role=user.role, user_id=user.id, user_email=user.email
        )
        changes = {
            "email": user.email,
            "role": user.role,
            "invitation_id": str(row["id"]),
            "sign_in": "password" if password_hash is not None else "sso",
        }
        await audit.record(conn, newcomer, "user.joined", "user", user.id, changes)
    return user


async def _target(conn: Connection, actor: Account, user_id: str) -> tuple[User, bool]:
    """The person ``user_id`` of the actor's account, locked, and whether the account has an
    owner; NotFound for another account's, a removed one, or a malformed ID."""
    parsed = _uuid(user_id, "user")
    has_owner = await _lock(conn, actor.id)
    row = await conn.fetchrow(SELECT_USER_FOR_UPDATE, parsed, actor.id)
    if row is None:
        raise NotFound(f"no user {user_id} in this account")
    return _user(row), has_owner


async def _keep_an_owner(conn: Connection, actor: Account, user: User, what: str) -> None:
    if user.role == Role.OWNER and await conn.fetchval(COUNT_OWNERS, actor.id) <= 1:
        raise Conflict(
            f"{user.email} is the account's last owner and cannot be {what}: make another owner first",
            rule="last-owner",
        )


async def change_role(pool: Pool, actor: Account, user_id: str, role: str) -> User:
    """Give a person of the actor's account ``role``. Forbidden as
    shared.domain.people.check_may_change says; Conflict for the last owner's demotion
    (under the account's lock). The person's keys above the new role are lowered to it.
    Audited ``user.role_changed`` (from/to, the keys lowered); the same role changes nothing."""
    async with pool.acquire() as conn, conn.transaction():
        user, has_owner = await _target(conn, actor, user_id)
        people.check_may_change(
            actor.role, actor.user_id, user.id, user.role, role, account_has_owner=has_owner
        )
        if role == user.role:
            return user
        if role != Role.OWNER:
            await _keep_an_owner(conn, actor, user, "demoted")
        await conn.execute(UPDATE_ROLE, uuid.UUID(user.id), role)
        capped = await conn.execute(CAP_KEYS, uuid.UUID(user.id), _key_role(role), people.roles_above(role))
        changes = {
            "email": user.email,
            "role": {"from": user.role, "to": role},
            "api_keys_lowered": int(capped.split()[-1]),
        }
        await audit.record(conn, actor, "user.role_changed", "user", user.id, changes)
    return dataclasses.replace(user, role=role)


def _key_role(role: str) -> str:
    return Role.ADMIN if role == Role.OWNER else role


async def remove_user(pool: Pool, actor: Account, user_id: str) -> Removal:
    """Remove a person of the actor's account: in one transaction their console sessions are
    deleted, their personal keys revoked and their credentials erased (the row stays for the
    audit trail). Forbidden as shared.domain.people.check_may_change says (role None);
    Conflict for the last owner. Audited ``user.removed``."""
    async with pool.acquire() as conn, conn.transaction():
        user, has_owner = await _target(conn, actor, user_id)
        people.check_may_change(
            actor.role, actor.user_id, user.id, user.role, None, account_has_owner=has_owner
        )
        await _keep_an_owner(conn, actor, user, "removed")
        parsed = uuid.UUID(user.id)
        await conn.execute(REMOVE_USER, parsed)
        await conn.execute(DELETE_RECOVERY_CODES, parsed)
        sessions = int((await conn.execute(END_SESSIONS, parsed)).split()[-1])
        keys = int((await conn.execute(REVOKE_PERSONAL_KEYS, parsed)).split()[-1])
        changes = {
            "email": user.email,
            "role": user.role,
            "api_keys_revoked": keys,
            "sessions_ended": sessions,
        }
        await audit.record(conn, actor, "user.removed", "user", user.id, changes)
    return Removal(user, keys, sessions)


async def revoke_invitation(pool: Pool, actor: Account, invitation_id: str) -> None:
    """Revoke an invitation of the actor's account not accepted yet: its link is refused from
    now on. NotFound otherwise (another account's, accepted, revoked already). Audited
    ``invitation.revoked``."""
    parsed = _uuid(invitation_id, "invitation")
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(REVOKE_INVITATION, parsed, actor.id)
        if row is None:
            raise NotFound(f"no open invitation {invitation_id} in this account")
        changes = {"email": row["email"], "role": row["role"]}
        await audit.record(conn, actor, "invitation.revoked", "invitation", str(parsed), changes)
