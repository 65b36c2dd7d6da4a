"""Accounts and their operator API keys (stored as SHA-256 digests only)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db import audit
from shared.db.pool import Connection, Pool
from shared.domain import people
from shared.domain.accounts import Account
from shared.domain.credentials import api_key_digest, new_api_key
from shared.domain.roles import KEY_ROLES, Role, a_role, at_least
from shared.errors import Conflict, Forbidden, InvalidInput, NotFound

INSERT_ACCOUNT = "INSERT INTO accounts (id, name) VALUES ($1, $2)"
SELECT_ACCOUNT_BY_NAME = "SELECT id::text, name FROM accounts WHERE name = $1"
# A new key belongs to the same owner as the key that creates it (a person's key makes a
# personal key, a service account's key one of that service account); a person acting without
# a key (a console session) makes a personal key, while the person is not removed; a key made
# by neither (the CLI's own setup) belongs to the account's service account "default"
# (migration 0036).
INSERT_KEY = """INSERT INTO api_keys (id, account_id, key_digest, key_prefix, label, role,
                                      user_id, service_account_id)
                SELECT $1, $2, $3, $4, $5, $6, owner.user_id, owner.service_account_id
                FROM (SELECT k.user_id, k.service_account_id FROM api_keys k
                      WHERE k.id = $7 AND k.account_id = $2
                      UNION ALL
                      SELECT u.id, NULL FROM users u
                      WHERE $7::uuid IS NULL AND u.id = $8 AND u.account_id = $2 AND u.removed_at IS NULL
                      UNION ALL
                      SELECT NULL, s.id FROM service_accounts s
                      WHERE $7::uuid IS NULL AND $8::uuid IS NULL AND s.account_id = $2
                        AND s.name = 'default' AND s.removed_at IS NULL) owner
                LIMIT 1"""
# The account's service account "default" (migration 0036 made one for every account then;
# an account made since gets it with its first key made without a key).
INSERT_DEFAULT_SERVICE_ACCOUNT = """INSERT INTO service_accounts (id, account_id, name, role)
                                    VALUES ($1, $2, 'default', 'admin')
                                    ON CONFLICT (account_id, name) WHERE removed_at IS NULL DO NOTHING"""
# Who a key is: its account, its role, and its owner, a user (not removed) or a service account.
_KEY_ACTOR = """SELECT a.id::text AS id, a.name, k.id::text AS key_id, k.label, k.role,
                       u.id::text AS user_id, u.email AS user_email, s.name AS service_account
                FROM api_keys k JOIN accounts a ON a.id = k.account_id
                LEFT JOIN users u ON u.id = k.user_id
                LEFT JOIN service_accounts s ON s.id = k.service_account_id
                WHERE k.revoked_at IS NULL
                  AND (k.user_id IS NULL OR u.removed_at IS NULL)
                  AND (k.service_account_id IS NULL OR s.removed_at IS NULL)"""
SELECT_ACCOUNT_FOR_KEY = _KEY_ACTOR + " AND k.key_digest = $1"
SELECT_KEYS = """SELECT k.id::text, k.key_prefix, k.label, k.role, k.created_at, k.revoked_at,
                        u.email AS user_email, s.name AS service_account
                 FROM api_keys k
                 LEFT JOIN users u ON u.id = k.user_id
                 LEFT JOIN service_accounts s ON s.id = k.service_account_id
                 WHERE k.account_id = $1
                   AND ($2::text[] IS NULL OR (k.role = ANY($2::text[]) AND (k.user_id = $3::uuid
                        OR (k.user_id IS NULL AND k.service_account_id =
                            (SELECT o.service_account_id FROM api_keys o WHERE o.id = $4::uuid)))))
                 ORDER BY k.created_at"""
# A key the actor may revoke: any of the account's for an admin ($3 NULL), else one of the
# actor's own (own_keys() gives the parameters).
REVOKE_KEY = """UPDATE api_keys k SET revoked_at = now()
                WHERE k.id = $1 AND k.account_id = $2 AND k.revoked_at IS NULL
                  AND ($3::text[] IS NULL OR (k.role = ANY($3::text[]) AND (k.user_id = $4::uuid
                       OR (k.user_id IS NULL AND k.service_account_id =
                           (SELECT o.service_account_id FROM api_keys o WHERE o.id = $5::uuid)))))
                RETURNING k.label"""
KEY_EXISTS = "SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = $1 AND account_id = $2 AND revoked_at IS NULL)"


@dataclass(frozen=True)
class IssuedApiKey:
    """A key just created: the key itself exists in clear only here, once."""

    id: str
    key: str
    label: str
    role: str = Role.ADMIN

    @property
    def read_only(self) -> bool:
        return self.role == Role.VIEWER


@dataclass(frozen=True)
class ApiKey:
    """A key as stored: its first characters (``prefix``) identify it, never the key."""

    id: str
    prefix: str
    label: str
    role: str
    created_at: datetime
    revoked_at: datetime | None
    user_email: str | None = None  # a personal key's owner
    service_account: str | None = None  # or the service account it belongs to

    @property
    def read_only(self) -> bool:
        return self.role == Role.VIEWER


async def create_account(pool: Pool, name: str) -> tuple[Account, str]:
    """Create an account with its first API key; the key is returned once and never stored."""
    account = Account(str(uuid.uuid4()), name)
    async with pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute(INSERT_ACCOUNT, account.id, name)
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(f"an account named {name!r} exists already", field="name") from exc
        issued = await _insert_key(conn, account, "first key")
    return account, issued.key


async def find_account(pool: Pool, name: str) -> Account | None:
    row = await pool.fetchrow(SELECT_ACCOUNT_BY_NAME, name)
    return Account(row["id"], row["name"]) if row else None


LOCK_ACCOUNT = "SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE"
COUNT_ACTIVE_KEYS = "SELECT count(*) FROM api_keys WHERE account_id = $1 AND revoked_at IS NULL"


async def create_api_key(
    pool: Pool,
    actor: Account,
    label: str,
    *,
    role: str | None = None,
    read_only: bool = False,
    max_active: int | None = None,
) -> IssuedApiKey:
    """A new key of the actor's account, the key itself returned this once; audited as
    ``api_key.created`` (label and role, never the key). It belongs to the actor's key's
    owner (the person, or the service account), or to the person of a keyless actor (a
    console session: a personal key), else to the account's ``default`` service account;
    it carries ``role`` (``viewer`` when ``read_only``; by default the actor's own role, at
    most admin). Forbidden (403) for a role above the actor's: a key never carries more
    than its creator's role, nor owner. Conflict when the account already has
    ``max_active`` active keys (checked under the account's row lock: parallel creations
    cannot pass it together); NotFound when the key's owner is gone."""
    wanted = Role.VIEWER if read_only else Role(role) if role is not None else _key_role_of(actor)
    if wanted not in KEY_ROLES or not at_least(actor.role, wanted):
        raise Forbidden(
            f"{a_role(actor.role)} cannot create a key with the role {wanted}: a key carries at most its "
            "creator's role, and never owner",
            field="role",
            rule=f"at-most={_key_role_of(actor)}",
        )
    async with pool.acquire() as conn, conn.transaction():
        if max_active is not None:
            await conn.execute(LOCK_ACCOUNT, actor.id)
            if await conn.fetchval(COUNT_ACTIVE_KEYS, actor.id) >= max_active:
                raise Conflict(
                    f"the account has {max_active} active API keys, the most it may have; "
                    "revoke one it no longer uses first",
                    rule=f"max_active_keys={max_active}",
                )
        issued = await _insert_key(conn, actor, label, role=wanted)
        await audit.record(
            conn,
            actor,
            "api_key.created",
            "api_key",
            issued.id,
            {"label": label, "role": str(wanted), "read_only": wanted == Role.VIEWER},
        )
        return issued


async def _insert_key(
    conn: Connection, actor: Account, label: str, *, role: str = Role.ADMIN
) -> IssuedApiKey:
    if "\0" in label:  # Postgres's text cannot hold it: the server's refusal would be a 500
        raise InvalidInput("label may not hold a NUL character", field="label", rule="charset=no-NUL")
    key, key_id = new_api_key(), str(uuid.uuid4())
    creator = uuid.UUID(actor.key_id) if actor.key_id else None
    person = uuid.UUID(actor.user_id) if actor.user_id else None
    if creator is None and person is None:
        await conn.execute(INSERT_DEFAULT_SERVICE_ACCOUNT, uuid.uuid4(), uuid.UUID(actor.id))
    status = await conn.execute(
        INSERT_KEY,
        key_id,
        uuid.UUID(actor.id),
        api_key_digest(key),
        key[:8],
        label,
        str(role),
        creator,
        person,
    )
    if not status.endswith(" 1"):  # the key's owner is gone (a removed person), or no default service account
        raise NotFound("the key's owner no longer exists in this account", field="Authorization")
    return IssuedApiKey(id=key_id, key=key, label=label, role=role)


def _key_role_of(actor: Account) -> Role:
    """The role a key made by ``actor`` carries unless it asks for less: the actor's, at most admin."""
    return Role.ADMIN if actor.role == Role.OWNER else Role(actor.role)


def _actor(row: asyncpg.Record) -> Account:
    return Account(
        row["id"],
        row["name"],
        key_id=row["key_id"],
        key_label=row["label"],
        role=row["role"],
        user_id=row["user_id"],
        user_email=row["user_email"],
        service_account=row["service_account"],
    )


async def account_for_key(pool: Pool, key: str) -> Account | None:
    """The account of a presented key, or None; never an error, whatever the text."""
    if not key.isascii():  # keys are ASCII; a header's undecodable bytes cannot be digested
        return None
    row = await pool.fetchrow(SELECT_ACCOUNT_FOR_KEY, api_key_digest(key))
    if row is None:
        return None
    return _actor(row)


def own_keys(actor: Account | None) -> tuple[list[str] | None, uuid.UUID | None, uuid.UUID | None]:
    """Which keys are the actor's own, as SELECT_KEYS's and REVOKE_KEY's parameters: every
    key of the account for an admin or owner (or None: no actor); else the keys of the same
    owner (the person's personal keys; a service account's key: that service account's)
    whose role is at most the actor's, so that a viewer's key never reaches an admin key."""
    if actor is None or at_least(actor.role, Role.ADMIN):
        return None, None, None
    roles = [str(r) for r in KEY_ROLES if at_least(actor.role, r)]
    if actor.user_id is not None:
        return roles, uuid.UUID(actor.user_id), None
    return roles, None, uuid.UUID(actor.key_id) if actor.key_id else None


async def list_api_keys(pool: Pool, account_id: str, *, owned_by: Account | None = None) -> list[ApiKey]:
    """The account's keys, revoked ones included, oldest first; with ``owned_by``, only
    those :func:`own_keys` names for that actor (every key for an admin)."""
    return [
        ApiKey(
            id=r["id"],
            prefix=r["key_prefix"],
            label=r["label"],
            role=r["role"],
            created_at=r["created_at"],
            revoked_at=r["revoked_at"],
            user_email=r["user_email"],
            service_account=r["service_account"],
        )
        for r in await pool.fetch(SELECT_KEYS, account_id, *own_keys(owned_by))
    ]


async def revoke_api_key(pool: Pool, actor: Account, key_id: str) -> None:
    """Revoke one active key of the actor's account (NotFound otherwise); audited as
    ``api_key.revoked``. A key may revoke itself: its next call is refused. Below admin, only
    the actor's own keys (:func:`own_keys`; Forbidden for another active key)."""
    try:  # parsed here, so the driver never refuses a caller's text with its value in the error
        parsed = uuid.UUID(key_id)
    except ValueError:
        raise NotFound(f"no active API key {key_id} in this account") from None
    async with pool.acquire() as conn, conn.transaction():
        label = await conn.fetchval(REVOKE_KEY, parsed, actor.id, *own_keys(actor))
        if label is None and await conn.fetchval(KEY_EXISTS, parsed, actor.id):
            raise people.refused(actor.role, "revoking another's key needs the admin role", Role.ADMIN)
        if label is None:
            raise NotFound(f"no active API key {key_id} in this account")
        await audit.record(conn, actor, "api_key.revoked", "api_key", str(parsed), {"label": label})


SELECT_ACCOUNT_FOR_KEY_ID = _KEY_ACTOR + " AND k.id = $1"


async def account_for_key_id(pool: Pool, key_id: str) -> Account | None:
    """The account of an active key named by its ID (a console session's key), or None when
    the key is revoked, unknown or the text is not a key ID."""
    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        return None
    row = await pool.fetchrow(SELECT_ACCOUNT_FOR_KEY_ID, parsed)
    if row is None:
        return None
    return _actor(row)
