"""Named service accounts (issue 28): automation's API keys belong to one, with a role
(viewer, operator or admin; never owner). Every account has ``default`` (migration 0036:
every key from before people existed is one of its keys). Removing a service account
revokes its keys in the same transaction; the key lookup refuses a removed one's besides."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db import audit
from shared.db.accounts import COUNT_ACTIVE_KEYS, LOCK_ACCOUNT, IssuedApiKey
from shared.db.pool import Pool
from shared.domain.accounts import Account
from shared.domain.credentials import api_key_digest, new_api_key
from shared.domain.roles import KEY_ROLES, Role, a_role, at_least
from shared.errors import Conflict, Forbidden, InvalidInput, NotFound

SELECT_SERVICE_ACCOUNTS = """
    SELECT s.id::text, s.name, s.role, s.created_at,
           (SELECT count(*) FROM api_keys k
            WHERE k.service_account_id = s.id AND k.revoked_at IS NULL) AS active_keys
    FROM service_accounts s WHERE s.account_id = $1 AND s.removed_at IS NULL
    ORDER BY s.created_at, s.id"""
INSERT_SERVICE_ACCOUNT = """INSERT INTO service_accounts (id, account_id, name, role) VALUES ($1, $2, $3, $4)
                            RETURNING created_at"""
REMOVE_SERVICE_ACCOUNT = """UPDATE service_accounts SET removed_at = now()
                            WHERE id = $1 AND account_id = $2 AND removed_at IS NULL RETURNING name"""
REVOKE_ITS_KEYS = """UPDATE api_keys SET revoked_at = now()
                     WHERE service_account_id = $1 AND revoked_at IS NULL"""
SELECT_FOR_KEY = """SELECT name, role FROM service_accounts
                    WHERE id = $1 AND account_id = $2 AND removed_at IS NULL FOR SHARE"""
INSERT_ITS_KEY = """INSERT INTO api_keys (id, account_id, key_digest, key_prefix, label, role,
                                          service_account_id)
                    VALUES ($1, $2, $3, $4, $5, $6, $7)"""


@dataclass(frozen=True)
class ServiceAccount:
    """A service account (not removed), and how many active keys it has."""

    id: str
    name: str
    role: str
    created_at: datetime
    active_api_keys: int = 0


def _parsed(value: str) -> uuid.UUID:
    try:  # parsed here, so the driver never refuses a caller's text with its value in the error
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"no service account {value[:64]!r} in this account") from None


def _at_most(actor: Account, role: str, what: str) -> None:
    if role not in KEY_ROLES or not at_least(actor.role, role):
        raise Forbidden(
            f"{a_role(actor.role)} cannot make {what} with the role {role}: at most the caller's own role, "
            "never owner",
            field="role",
            rule=f"at-most={Role.ADMIN if actor.role == Role.OWNER else actor.role}",
        )


async def list_service_accounts(pool: Pool, account_id: str) -> list[ServiceAccount]:
    """The account's service accounts (not removed), oldest first."""
    return [
        ServiceAccount(r["id"], r["name"], r["role"], r["created_at"], r["active_keys"])
        for r in await pool.fetch(SELECT_SERVICE_ACCOUNTS, account_id)
    ]


async def create_service_account(pool: Pool, actor: Account, name: str, role: str) -> ServiceAccount:
    """A new service account of the actor's account; Forbidden for a role above the actor's
    (or owner), Conflict when a service account of that name exists. Audited
    ``service_account.created``."""
    _at_most(actor, role, "a service account")
    account_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        try:
            created = await conn.fetchval(INSERT_SERVICE_ACCOUNT, account_id, actor.id, name, role)
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(f"a service account named {name!r} exists already", field="name") from exc
        changes = {"name": name, "role": role}
        await audit.record(
            conn, actor, "service_account.created", "service_account", str(account_id), changes
        )
    return ServiceAccount(str(account_id), name, role, created)


async def remove_service_account(pool: Pool, actor: Account, service_account_id: str) -> int:
    """Remove a service account of the actor's account and revoke its keys in the same
    transaction (the key calling may be one of them: its next call is refused); how many
    keys were revoked. NotFound otherwise. Audited ``service_account.removed``."""
    parsed = _parsed(service_account_id)
    async with pool.acquire() as conn, conn.transaction():
        name = await conn.fetchval(REMOVE_SERVICE_ACCOUNT, parsed, actor.id)
        if name is None:
            raise NotFound(f"no service account {service_account_id} in this account")
        revoked = int((await conn.execute(REVOKE_ITS_KEYS, parsed)).split()[-1])
        changes = {"name": name, "api_keys_revoked": revoked}
        await audit.record(conn, actor, "service_account.removed", "service_account", str(parsed), changes)
    return revoked


async def create_key(
    pool: Pool,
    actor: Account,
    service_account_id: str,
    label: str,
    role: str | None,
    *,
    max_active: int | None = None,
) -> tuple[IssuedApiKey, str]:
    """A new key of a service account of the actor's account, returned this once with the
    service account's name. Its role is ``role`` (by default the service account's, lowered
    to the actor's): never above the service account's nor the actor's (Forbidden). NotFound
    for an unknown or removed service account; Conflict past ``max_active`` active keys in
    the account (under its row lock). Audited ``api_key.created`` (label, role, service
    account; never the key)."""
    if "\0" in label:  # Postgres's text cannot hold it
        raise InvalidInput("label may not hold a NUL character", field="label", rule="charset=no-NUL")
    parsed = _parsed(service_account_id)
    async with pool.acquire() as conn, conn.transaction():
        if max_active is not None:
            await conn.execute(LOCK_ACCOUNT, actor.id)
        found = await conn.fetchrow(SELECT_FOR_KEY, parsed, actor.id)
        if found is None:
            raise NotFound(f"no service account {service_account_id} in this account")
        ceiling = found["role"] if at_least(actor.role, found["role"]) else actor.role
        wanted = role if role is not None else (Role.ADMIN if ceiling == Role.OWNER else ceiling)
        _at_most(actor, wanted, "a key")
        if not at_least(found["role"], wanted):
            raise Forbidden(
                f"the service account {found['name']!r} is {a_role(found['role'])}: "
                "its keys carry at most that role",
                field="role",
                rule=f"at-most={found['role']}",
            )
        if max_active is not None and await conn.fetchval(COUNT_ACTIVE_KEYS, actor.id) >= max_active:
            raise Conflict(
                f"the account has {max_active} active API keys, the most it may have; "
                "revoke one it no longer uses first",
                rule=f"max_active_keys={max_active}",
            )
        key, key_id = new_api_key(), str(uuid.uuid4())
        await conn.execute(
            INSERT_ITS_KEY, key_id, uuid.UUID(actor.id), api_key_digest(key), key[:8], label, wanted, parsed
        )
        changes = {
            "label": label,
            "role": wanted,
            "read_only": wanted == Role.VIEWER,
            "service_account": found["name"],
        }
        await audit.record(conn, actor, "api_key.created", "api_key", key_id, changes)
    return IssuedApiKey(id=key_id, key=key, label=label, role=wanted), found["name"]
