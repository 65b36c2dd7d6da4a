"""Security alerts: patterns an operator should look at. Raised in the transaction of the
decision that crossed the threshold; an alert never refuses a device.

The kinds (docs/security.md, "Security alerts"):

* ``bulk_key_guessing``: repeated wrong registration keys for one hardware ID of a bulk
  product (``count`` wrong keys within the window; ``listed``: whether it is a real device);
* ``hardware_id_squatting``: one source reached the per-source clone rate or the clone limit
  for one claimed hardware ID's family head (while ``H`` exists, its spellings ``H-1``,
  ``H-01``, ``H-1-1`` count with it; ``hardware_id`` names the head; ``count`` what that
  source created within the window);
* ``quota_filled``: an auto registration's ``max_devices`` was reached (``count`` devices;
  ``source`` took the last place; no window);
* ``two_sources_before_ready``: two sources reclaimed one hardware ID before it confirmed.

One alert per (product, kind, hardware ID in any case), updated by every later occurrence (its source,
count and window are the last occurrence's)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from shared.db.pool import Connection, Pool

AlertKind = Literal["bulk_key_guessing", "hardware_id_squatting", "quota_filled", "two_sources_before_ready"]
BULK_KEY_GUESSING: AlertKind = "bulk_key_guessing"
HARDWARE_ID_SQUATTING: AlertKind = "hardware_id_squatting"
QUOTA_FILLED: AlertKind = "quota_filled"
TWO_SOURCES_BEFORE_READY: AlertKind = "two_sources_before_ready"
ALERT_KINDS: tuple[AlertKind, ...] = (
    BULK_KEY_GUESSING,
    HARDWARE_ID_SQUATTING,
    QUOTA_FILLED,
    TWO_SOURCES_BEFORE_READY,
)

# Sorted rows and one statement: concurrent batches update shared rows in the same order.
# wrong_keys is written for bulk_key_guessing alone (the previous release reads it).
UPSERT_ALERTS = """
    INSERT INTO security_alerts
        (id, account_id, product_id, kind, hardware_id, source, count, listed, wrong_keys,
         window_seconds)
    SELECT id, account_id, product_id, kind, hardware_id, source, count, listed,
           CASE WHEN kind = 'bulk_key_guessing' THEN count END, window_seconds
    FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                $7::int[], $8::bool[], $9::int[])
         AS s (id, account_id, product_id, kind, hardware_id, source, count, listed, window_seconds)
    ON CONFLICT (product_id, kind, hardware_id) DO UPDATE
       SET source = excluded.source, count = excluded.count, listed = excluded.listed,
           wrong_keys = excluded.wrong_keys, window_seconds = excluded.window_seconds,
           last_seen_at = now()"""
# An alert already recorded for the same ID in another case (rows of the previous release,
# or a device renamed since): its spelling is kept, so one ID stays one alert.
SELECT_SPELLINGS = """
    SELECT DISTINCT ON (product_id, kind, lower(hardware_id))
           product_id::text, kind, lower(hardware_id) AS folded, hardware_id
    FROM security_alerts
    WHERE product_id = ANY($1::uuid[]) AND kind = ANY($2::text[])
      AND lower(hardware_id) = ANY($3::text[])
    ORDER BY product_id, kind, lower(hardware_id), first_seen_at"""
SELECT_ALERTS = """
    SELECT id::text, kind, product_id::text, hardware_id, source,
           CASE WHEN kind = 'bulk_key_guessing' THEN wrong_keys ELSE count END AS count,
           listed, window_seconds, first_seen_at, last_seen_at
    FROM security_alerts
    WHERE account_id = $1 AND ($2::text IS NULL OR kind = $2)
      AND ($3::timestamptz IS NULL OR last_seen_at < $3
           OR (last_seen_at = $3 AND $5::uuid IS NOT NULL AND id < $5::uuid))
    ORDER BY last_seen_at DESC, id DESC LIMIT $4"""


@dataclass(frozen=True)
class AlertSighting:
    """One occurrence at or past an alert's threshold, to record.

    ``count`` is the kind's count with this occurrence included (see the module docstring);
    ``window_s`` the window it was counted in (None: none, as for quota_filled); ``source``
    the caller's source where one source is meant; ``listed`` bulk_key_guessing's alone."""

    account_id: str
    product_id: str
    kind: AlertKind
    hardware_id: str
    count: int
    window_s: float | None
    source: str = ""
    listed: bool | None = None


@dataclass(frozen=True)
class SecurityAlert:
    id: str
    kind: str
    product_id: str
    hardware_id: str
    source: str
    count: int
    listed: bool | None  # bulk_key_guessing: the hardware ID is a listed device; else None
    window_seconds: int | None
    first_seen_at: datetime
    last_seen_at: datetime

    @property
    def wrong_keys(self) -> int | None:
        """Wrong registration keys within the window (bulk_key_guessing), else None."""
        return self.count if self.kind == BULK_KEY_GUESSING else None


async def record(conn: Connection, sightings: Sequence[AlertSighting]) -> None:
    """Create or update one alert per (product, kind, hardware ID in any case), in the
    caller's transaction; of several sightings of one alert the last (highest count) is
    kept. An alert recorded before under another case of the ID keeps its spelling."""
    if not sightings:
        return
    found = await conn.fetch(
        SELECT_SPELLINGS,
        list({s.product_id for s in sightings}),
        list({s.kind for s in sightings}),
        list({s.hardware_id.lower() for s in sightings}),
    )
    spelling = {(r["product_id"], r["kind"], r["folded"]): r["hardware_id"] for r in found}
    latest: dict[tuple[str, str, str], AlertSighting] = {}
    for s in sightings:
        folded = s.hardware_id.lower()
        named = spelling.get((s.product_id, s.kind, folded), s.hardware_id)
        latest[(s.product_id, s.kind, folded)] = replace(s, hardware_id=named)
    rows = [latest[k] for k in sorted(latest)]
    await conn.execute(
        UPSERT_ALERTS,
        [uuid.uuid4() for _ in rows],
        [s.account_id for s in rows],
        [s.product_id for s in rows],
        [s.kind for s in rows],
        [s.hardware_id for s in rows],
        [s.source for s in rows],
        [s.count for s in rows],
        [s.listed for s in rows],
        [None if s.window_s is None else max(1, math.ceil(s.window_s)) for s in rows],
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
            source=r["source"],
            count=r["count"],
            listed=r["listed"],
            window_seconds=r["window_seconds"],
            first_seen_at=r["first_seen_at"],
            last_seen_at=r["last_seen_at"],
        )
        for r in rows
    ]
