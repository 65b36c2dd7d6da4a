"""Accounts and their operator API keys (stored as SHA-256 digests only)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db import audit
from shared.db.pool import Connection, Pool
from shared.domain.accounts import Account
from shared.domain.credentials import api_key_digest, new_api_key
from shared.errors import Conflict, InvalidInput, NotFound

INSERT_ACCOUNT = "INSERT INTO accounts (id, name) VALUES ($1, $2)"
SELECT_ACCOUNT_BY_NAME = "SELECT id::text, name FROM accounts WHERE name = $1"
INSERT_KEY = """INSERT INTO api_keys (id, account_id, key_digest, key_prefix, label, read_only)
                VALUES ($1, $2, $3, $4, $5, $6)"""
SELECT_ACCOUNT_FOR_KEY = """SELECT a.id::text AS id, a.name, k.id::text AS key_id, k.label, k.read_only
                            FROM api_keys k JOIN accounts a ON a.id = k.account_id
                            WHERE k.key_digest = $1 AND k.revoked_at IS NULL"""
SELECT_KEYS = """SELECT id::text, key_prefix, label, read_only, created_at, revoked_at FROM api_keys
                 WHERE account_id = $1 ORDER BY created_at"""
REVOKE_KEY = """UPDATE api_keys SET revoked_at = now()
                WHERE id = $1 AND account_id = $2 AND revoked_at IS NULL RETURNING label"""


@dataclass(frozen=True)
class IssuedApiKey:
    """A key just created: the key itself exists in clear only here, once."""

    id: str
    key: str
    label: str
    read_only: bool = False


@dataclass(frozen=True)
class ApiKey:
    """A key as stored: its first characters (``prefix``) identify it, never the key."""

    id: str
    prefix: str
    label: str
    read_only: bool
    created_at: datetime
    revoked_at: datetime | None


async def create_account(pool: Pool, name: str) -> tuple[Account, str]:
    """Create an account with its first API key; the key is returned once and never stored."""
    account = Account(str(uuid.uuid4()), name)
    async with pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute(INSERT_ACCOUNT, account.id, name)
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(f"an account named {name!r} exists already", field="name") from exc
        issued = await _insert_key(conn, account.id, "first key")
    return account, issued.key


async def find_account(pool: Pool, name: str) -> Account | None:
    row = await pool.fetchrow(SELECT_ACCOUNT_BY_NAME, name)
    return Account(row["id"], row["name"]) if row else None


LOCK_ACCOUNT = "SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE"
COUNT_ACTIVE_KEYS = "SELECT count(*) FROM api_keys WHERE account_id = $1 AND revoked_at IS NULL"


async def create_api_key(
    pool: Pool, actor: Account, label: str, *, read_only: bool = False, max_active: int | None = None
) -> IssuedApiKey:
    """A new key of the actor's account, the key itself returned this once; audited as
    ``api_key.created`` (label and scope, never the key). Conflict when the account already
    has ``max_active`` active keys (checked under the account's row lock: parallel
    creations cannot pass it together)."""
    async with pool.acquire() as conn, conn.transaction():
        if max_active is not None:
            await conn.execute(LOCK_ACCOUNT, actor.id)
            if await conn.fetchval(COUNT_ACTIVE_KEYS, actor.id) >= max_active:
                raise Conflict(
                    f"the account has {max_active} active API keys, the most it may have; "
                    "revoke one it no longer uses first",
                    rule=f"max_active_keys={max_active}",
                )
        issued = await _insert_key(conn, actor.id, label, read_only=read_only)
        await audit.record(
            conn, actor, "api_key.created", "api_key", issued.id, {"label": label, "read_only": read_only}
        )
        return issued


async def _insert_key(
    conn: Connection, account_id: str, label: str, *, read_only: bool = False
) -> IssuedApiKey:
    if "\0" in label:  # Postgres's text cannot hold it: the server's refusal would be a 500
        raise InvalidInput("label may not hold a NUL character", field="label", rule="charset=no-NUL")
    key, key_id = new_api_key(), str(uuid.uuid4())
    await conn.execute(INSERT_KEY, key_id, account_id, api_key_digest(key), key[:8], label, read_only)
    return IssuedApiKey(id=key_id, key=key, label=label, read_only=read_only)


async def account_for_key(pool: Pool, key: str) -> Account | None:
    """The account of a presented key, or None; never an error, whatever the text."""
    if not key.isascii():  # keys are ASCII; a header's undecodable bytes cannot be digested
        return None
    row = await pool.fetchrow(SELECT_ACCOUNT_FOR_KEY, api_key_digest(key))
    if row is None:
        return None
    return Account(
        row["id"], row["name"], key_id=row["key_id"], key_label=row["label"], read_only=row["read_only"]
    )


async def list_api_keys(pool: Pool, account_id: str) -> list[ApiKey]:
    """The account's keys, revoked ones included, oldest first."""
    return [
        ApiKey(
            id=r["id"],
            prefix=r["key_prefix"],
            label=r["label"],
            read_only=r["read_only"],
            created_at=r["created_at"],
            revoked_at=r["revoked_at"],
        )
        for r in await pool.fetch(SELECT_KEYS, account_id)
    ]


async def revoke_api_key(pool: Pool, actor: Account, key_id: str) -> None:
    """Revoke one active key of the actor's account (NotFound otherwise); audited as
    ``api_key.revoked``. A key may revoke itself: its next call is refused."""
    try:  # parsed here, so the driver never refuses a caller's text with its value in the error
        parsed = uuid.UUID(key_id)
    except ValueError:
        raise NotFound(f"no active API key {key_id} in this account") from None
    async with pool.acquire() as conn, conn.transaction():
        label = await conn.fetchval(REVOKE_KEY, parsed, actor.id)
        if label is None:
            raise NotFound(f"no active API key {key_id} in this account")
        await audit.record(conn, actor, "api_key.revoked", "api_key", str(parsed), {"label": label})


SELECT_ACCOUNT_FOR_KEY_ID = """SELECT a.id::text AS id, a.name, k.id::text AS key_id, k.label, k.read_only
                               FROM api_keys k JOIN accounts a ON a.id = k.account_id
                               WHERE k.id = $1 AND k.revoked_at IS NULL"""


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
    return Account(
        row["id"], row["name"], key_id=row["key_id"], key_label=row["label"], read_only=row["read_only"]
    )
