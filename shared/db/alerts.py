"""Security alerts: patterns an operator should look at (repeated wrong bulk registration
keys for one hardware ID). Raised in the transaction of the decision that crossed the
threshold; an alert never refuses a device."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from shared.db.pool import Connection, Pool

AlertKind = Literal["bulk_key_guessing"]
BULK_KEY_GUESSING: AlertKind = "bulk_key_guessing"

# Sorted rows and one statement: concurrent batches update shared rows in the same order.
UPSERT_ALERTS = """
    INSERT INTO security_alerts
        (id, account_id, product_id, kind, hardware_id, listed, wrong_keys, window_seconds)
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::bool[],
                         $7::int[], $8::int[])
    ON CONFLICT (product_id, kind, hardware_id) DO UPDATE
       SET wrong_keys = excluded.wrong_keys, listed = excluded.listed,
           window_seconds = excluded.window_seconds, last_seen_at = now()"""
SELECT_ALERTS = """
    SELECT id::text, kind, product_id::text, hardware_id, listed, wrong_keys, window_seconds,
           first_seen_at, last_seen_at
    FROM security_alerts
    WHERE account_id = $1 AND ($2::text IS NULL OR kind = $2)
      AND ($3::timestamptz IS NULL OR last_seen_at < $3
           OR (last_seen_at = $3 AND $5::uuid IS NOT NULL AND id < $5::uuid))
    ORDER BY last_seen_at DESC, id DESC LIMIT $4"""


@dataclass(frozen=True)
class AlertSighting:
    """One occurrence at or past an alert's threshold, to record."""

    account_id: str
    product_id: str
    kind: AlertKind
    hardware_id: str
    listed: bool
    wrong_keys: int  # within the window, this occurrence included
    window_s: float


@dataclass(frozen=True)
class SecurityAlert:
    id: str
    kind: str
    product_id: str
    hardware_id: str
    listed: bool
    wrong_keys: int
    window_seconds: int
    first_seen_at: datetime
    last_seen_at: datetime


async def record(conn: Connection, sightings: Sequence[AlertSighting]) -> None:
    """Create or update one alert per (product, kind, hardware ID), in the caller's transaction;
    of several sightings of one alert the last (highest count) is kept."""
    latest = {(s.product_id, s.kind, s.hardware_id): s for s in sightings}
    rows = [latest[k] for k in sorted(latest)]
    if not rows:
        return
    await conn.execute(
        UPSERT_ALERTS,
        [uuid.uuid4() for _ in rows],
        [s.account_id for s in rows],
        [s.product_id for s in rows],
        [s.kind for s in rows],
        [s.hardware_id for s in rows],
        [s.listed for s in rows],
        [s.wrong_keys for s in rows],
        [max(1, math.ceil(s.window_s)) for s in rows],
    )


async def list_alerts(
    pool: Pool,
    account_id: str,
    *,
    kind: str | None,
    before: datetime | None,
    limit: int,
    before_id: str | None = None,
) -> list[SecurityAlert]:
    """The account's alerts, the most recently seen first; ``before`` and ``before_id``
    (the last alert ID seen at that time) page back without skipping any."""
    rows = await pool.fetch(SELECT_ALERTS, account_id, kind, before, limit, before_id)
    return [
        SecurityAlert(
            id=r["id"],
            kind=r["kind"],
            product_id=r["product_id"],
            hardware_id=r["hardware_id"],
            listed=r["listed"],
            wrong_keys=r["wrong_keys"],
            window_seconds=r["window_seconds"],
            first_seen_at=r["first_seen_at"],
            last_seen_at=r["last_seen_at"],
        )
        for r in rows
    ]
