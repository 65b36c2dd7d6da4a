"""A person's console sign-in (issue 28): their credentials as sign-in reads and changes
them, and their console sessions (migration 0036: ``console_sessions.user_id``).

A person's session is found as every session is (shared.db.console_sessions.load, by the
cookie's digest, only while the user is not removed); :func:`actor_for_session` then reads
the user's current role on every request, so a role change or a removal applies at once on
every instance. Ending a session deletes its row: its next request finds nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.db.pool import Pool
from shared.domain.accounts import Account

# Addresses and user agents are shown on the sessions page; a longer header is cut.
SOURCE_MAX, USER_AGENT_MAX = 64, 200

_USER = """SELECT u.id::text, u.account_id::text, u.email, u.role, u.password_hash,
                  u.totp_sealed, u.totp_last_step
           FROM users u WHERE u.removed_at IS NULL"""
SELECT_USER_BY_EMAIL = _USER + " AND lower(u.email) = lower($1)"
SELECT_USER_BY_ID = _USER + " AND u.id = $1"
SELECT_ACTOR = """SELECT a.id::text, a.name, u.id::text AS user_id, u.email, u.role, s.authenticated_at
                  FROM console_sessions s JOIN users u ON u.id = s.user_id
                  JOIN accounts a ON a.id = u.account_id
                  WHERE s.id = $1 AND s.user_id = $2 AND s.expires_at > now() AND u.removed_at IS NULL"""
ACCOUNT_HAS_USERS = "SELECT EXISTS (SELECT 1 FROM users WHERE account_id = $1 AND removed_at IS NULL)"
INSERT_SESSION = """INSERT INTO console_sessions
                        (digest, account_id, user_id, id, data, expires_at, source_address, user_agent)
                    VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)"""
SELECT_SESSIONS = """SELECT id::text, created_at, authenticated_at, source_address, user_agent
                     FROM console_sessions WHERE user_id = $1 AND expires_at > now()
                     ORDER BY created_at DESC"""
DELETE_SESSION = "DELETE FROM console_sessions WHERE user_id = $1 AND id = $2"
DELETE_OTHER_SESSIONS = "DELETE FROM console_sessions WHERE user_id = $1 AND id <> $2"
MARK_AUTHENTICATED = "UPDATE console_sessions SET authenticated_at = now() WHERE id = $1"
# A code's step is taken only when it is later than the last one taken: two requests racing
# with one code cannot both pass (shared.domain.totp.verify_code).
TAKE_TOTP_STEP = """UPDATE users SET totp_last_step = $2
                    WHERE id = $1 AND removed_at IS NULL
                      AND (totp_last_step IS NULL OR totp_last_step < $2)"""
SET_TOTP = "UPDATE users SET totp_sealed = $2, totp_last_step = $3 WHERE id = $1 AND removed_at IS NULL"
UNUSED_CODES = "SELECT digest FROM user_recovery_codes WHERE user_id = $1 AND used_at IS NULL"
USE_CODE = """UPDATE user_recovery_codes SET used_at = now()
              WHERE user_id = $1 AND digest = $2 AND used_at IS NULL"""
DELETE_CODES = "DELETE FROM user_recovery_codes WHERE user_id = $1"
INSERT_CODE = "INSERT INTO user_recovery_codes (user_id, digest) VALUES ($1, $2)"
SET_PASSWORD = "UPDATE users SET password_hash = $2 WHERE id = $1 AND removed_at IS NULL"  # noqa: S105


@dataclass(frozen=True)
class PersonCredentials:
    """A user not removed, as sign-in checks them: the argon2id hash (None: SSO only), the
    sealed TOTP secret (None: not enrolled) and the step of the last code accepted."""

    id: str
    account_id: str
    email: str
    role: str
    password_hash: str | None
    totp_sealed: bytes | None
    totp_last_step: int | None


@dataclass(frozen=True)
class PersonSession:
    """One of a person's console sessions, as the account page lists them."""

    id: str
    created_at: datetime
    authenticated_at: datetime
    source_address: str
    user_agent: str


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


async def person_by_email(pool: Pool, email: str) -> PersonCredentials | None:
    """The user signing in with ``email`` (case-insensitively), or None: one query either way."""
    row = await pool.fetchrow(SELECT_USER_BY_EMAIL, email)
    return PersonCredentials(*row) if row is not None else None


async def person_by_id(pool: Pool, user_id: str) -> PersonCredentials | None:
    parsed = _uuid(user_id)
    row = await pool.fetchrow(SELECT_USER_BY_ID, parsed) if parsed else None
    return PersonCredentials(*row) if row is not None else None


async def actor_for_session(pool: Pool, session_id: str, user_id: str) -> tuple[Account, datetime] | None:
    """The account acting through a person's session, with the user's current role, and
    when the person last proved who they are; None once the session ended or the user was
    removed."""
    parsed_session, parsed_user = _uuid(session_id), _uuid(user_id)
    if parsed_session is None or parsed_user is None:
        return None
    row = await pool.fetchrow(SELECT_ACTOR, parsed_session, parsed_user)
    if row is None:
        return None
    account = Account(
        row["id"],
        row["name"],
        role=row["role"],
        user_id=row["user_id"],
        user_email=row["email"],
        session_id=session_id,
    )
    return account, row["authenticated_at"]


async def account_has_users(pool: Pool, account_id: str) -> bool:
    """Whether the account has a person: then its console no longer signs in with a key."""
    return bool(await pool.fetchval(ACCOUNT_HAS_USERS, uuid.UUID(account_id)))


async def create(
    pool: Pool,
    digest: bytes,
    *,
    account_id: str,
    user_id: str,
    session_id: str,
    data: str,
    expires_at: datetime,
    source_address: str,
    user_agent: str,
) -> None:
    """A person's new session (every factor passed): its row, with where it came from."""
    await pool.execute(
        INSERT_SESSION,
        digest,
        uuid.UUID(account_id),
        uuid.UUID(user_id),
        uuid.UUID(session_id),
        data,
        expires_at,
        source_address[:SOURCE_MAX],
        user_agent[:USER_AGENT_MAX],
    )


async def sessions_of(pool: Pool, user_id: str) -> list[PersonSession]:
    """The person's live sessions, newest first."""
    return [PersonSession(*row) for row in await pool.fetch(SELECT_SESSIONS, uuid.UUID(user_id))]


async def end_session(pool: Pool, user_id: str, session_id: str) -> bool:
    """End one of the person's sessions (its next request is signed out); False when none."""
    parsed = _uuid(session_id)
    if parsed is None:
        return False
    status = await pool.execute(DELETE_SESSION, uuid.UUID(user_id), parsed)
    return status.endswith(" 1")


async def end_other_sessions(pool: Pool, user_id: str, keep_session_id: str) -> int:
    """End every session of the person but ``keep_session_id``; how many ended."""
    status = await pool.execute(DELETE_OTHER_SESSIONS, uuid.UUID(user_id), uuid.UUID(keep_session_id))
    return int(status.rsplit(" ", 1)[-1])


async def mark_authenticated(pool: Pool, session_id: str) -> None:
    """The person proved who they are again (re-authentication) in this session."""
    await pool.execute(MARK_AUTHENTICATED, uuid.UUID(session_id))


async def take_totp_step(pool: Pool, user_id: str, step: int) -> bool:
    """Record ``step`` as the person's last accepted code; False when a code of that step or
    a later one was accepted meanwhile (the code is refused)."""
    status = await pool.execute(TAKE_TOTP_STEP, uuid.UUID(user_id), step)
    return status.endswith(" 1")


async def set_totp(pool: Pool, user_id: str, sealed: bytes, step: int) -> None:
    """Enrol (or replace) the person's TOTP secret, its confirming code's step taken."""
    await pool.execute(SET_TOTP, uuid.UUID(user_id), sealed, step)


async def unused_recovery_codes(pool: Pool, user_id: str) -> list[bytes]:
    return [bytes(row[0]) for row in await pool.fetch(UNUSED_CODES, uuid.UUID(user_id))]


async def use_recovery_code(pool: Pool, user_id: str, digest: bytes) -> bool:
    """Mark the code used; False when it was used meanwhile (a code is good once)."""
    status = await pool.execute(USE_CODE, uuid.UUID(user_id), digest)
    return status.endswith(" 1")


async def replace_recovery_codes(pool: Pool, user_id: str, digests: Sequence[bytes]) -> None:
    """The person's new set of codes; every older one stops working."""
    parsed = uuid.UUID(user_id)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(DELETE_CODES, parsed)
        await conn.executemany(INSERT_CODE, [(parsed, d) for d in digests])


async def set_password(pool: Pool, user_id: str, password_hash: str) -> None:
    await pool.execute(SET_PASSWORD, uuid.UUID(user_id), password_hash)


async def change_password(pool: Pool, user_id: str, password_hash: str, keep_session_id: str) -> int:
    """The person chose a new password: it is stored and every other session of theirs ends,
    in one transaction (a session opened with the old password, by whoever knew it, does not
    outlive it); how many sessions ended."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(SET_PASSWORD, uuid.UUID(user_id), password_hash)
        status = await conn.execute(DELETE_OTHER_SESSIONS, uuid.UUID(user_id), uuid.UUID(keep_session_id))
    return int(status.rsplit(" ", 1)[-1])
