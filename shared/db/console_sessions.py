"""Console sessions (migration 0016): server-side state of a signed-in browser, found by
the SHA-256 digest of the cookie's token. A session whose key was revoked, or that has
expired, is not found."""

from __future__ import annotations

import uuid
from datetime import datetime

from shared.db.pool import Pool

# A session is a key's (while the account has no user) or a person's (migration 0036): it
# ends when the key is revoked or the person removed.
SELECT_SESSION = """SELECT s.data::text FROM console_sessions s
                    LEFT JOIN api_keys k ON k.id = s.key_id
                    LEFT JOIN users u ON u.id = s.user_id
                    WHERE s.digest = $1 AND s.expires_at > now()
                      AND ((k.id IS NOT NULL AND k.revoked_at IS NULL)
                           OR (u.id IS NOT NULL AND u.removed_at IS NULL))"""
INSERT_SESSION = """INSERT INTO console_sessions (digest, account_id, key_id, data, expires_at)
                    VALUES ($1, $2, $3, $4::jsonb, $5)"""
# Only a session that still exists is updated: a request that loaded it before sign-out and
# saves after must not bring it back.
UPDATE_SESSION = "UPDATE console_sessions SET data = $2::jsonb WHERE digest = $1 AND expires_at > now()"
DELETE_SESSION = "DELETE FROM console_sessions WHERE digest = $1"


async def load(pool: Pool, digest: bytes) -> str | None:
    """The session's data (JSON text), or None: unknown, expired, or its key revoked."""
    data: str | None = await pool.fetchval(SELECT_SESSION, digest)
    return data


async def create(
    pool: Pool, digest: bytes, account_id: str, key_id: str, data: str, expires_at: datetime
) -> None:
    """A new session (sign-in): its account, key and expiry are fixed here, for good."""
    await pool.execute(INSERT_SESSION, digest, uuid.UUID(account_id), uuid.UUID(key_id), data, expires_at)


async def update(pool: Pool, digest: bytes, data: str) -> bool:
    """Replace the data of a live session; False (nothing written) when it has ended
    (signed out, expired) meanwhile: an ended session is never brought back."""
    status = await pool.execute(UPDATE_SESSION, digest, data)
    return status.endswith(" 1")


async def delete(pool: Pool, digest: bytes) -> None:
    """End the session (sign-out); nothing happens when there is none."""
    await pool.execute(DELETE_SESSION, digest)
