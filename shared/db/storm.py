"""A boot storm as the registry sees it, second by second, for one account: what the
console's live view draws (services/operator/console/pages/live.py).

Two statements per look, each an index range bounded by the account and the window:

- the registration decisions decided in the window (index ``registration_decisions_account``
  on (account_id, decided_at)), counted per second and decision, with the ones still
  waiting for their provisioning files;
- the provisioned devices seen since the window's start minus the online TTL (partial
  index ``devices_last_seen`` on (account_id, last_seen_at) WHERE lifecycle =
  'provisioned'). A device confirmed in the window was seen then (its confirmation is a
  sign of life), so the same range gives the devices provisioned per second too. The
  devices are grouped in SQL by the seconds they came online and went offline, so a few
  hundred rows at most come back however large the fleet.

Seconds are whole Unix seconds (``floor(epoch)``), in the database's clock for the rows and
the caller's ``now`` for the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.db.pool import Pool

DECISIONS_PER_SECOND = """
    SELECT floor(extract(epoch FROM decided_at))::bigint AS second, decision, count(*) AS n,
           count(*) FILTER (WHERE status = 'decided' AND decided_at < $4) AS waiting,
           min(decided_at) FILTER (WHERE status = 'decided' AND decided_at < $4) AS oldest_waiting
    FROM registration_decisions
    WHERE account_id = $1 AND decided_at >= $2 AND decided_at <= $3
    GROUP BY 1, 2"""
# came: the first second (clipped to the window) at whose end the device was provisioned;
# gone: the first second at whose end its last sign of life is older than the TTL ($5 s).
# A device is online at the end of second s when came <= s < gone (shared/domain/devices.py:
# provisioned, not disabled, seen strictly within the TTL).
DEVICES_PER_SECOND = """
    SELECT greatest(floor(extract(epoch FROM provisioned_at)), $3)::bigint AS came,
           least(ceil(extract(epoch FROM last_seen_at) + $5 - 1), $4 + 1)::bigint AS gone,
           CASE WHEN provisioned_at >= to_timestamp($3) THEN floor(extract(epoch FROM provisioned_at))::bigint
           END AS provisioned_second,
           disabled, count(*) AS n
    FROM devices
    WHERE account_id = $1 AND lifecycle = 'provisioned' AND last_seen_at > $2
      AND provisioned_at IS NOT NULL
    GROUP BY 1, 2, 3, 4"""


@dataclass(frozen=True)
class DecisionCount:
    """Decisions of one kind (new, same, clone, refused) decided in one second."""

    second: int  # Unix second
    decision: str
    count: int
    # of them, still 'decided' (no provisioning files yet) and decided before the cut-off
    waiting: int
    oldest_waiting: datetime | None


@dataclass(frozen=True)
class DeviceSpan:
    """``count`` provisioned devices online at the end of each second in [came, gone)
    (clipped to the window; ``gone`` is the window's last second + 1 when still online),
    confirmed in ``provisioned_second`` (None: before the window)."""

    came: int
    gone: int
    provisioned_second: int | None
    disabled: bool
    count: int


async def decisions_per_second(
    pool: Pool, account_id: str, start: datetime, end: datetime, waiting_before: datetime
) -> list[DecisionCount]:
    """The account's decisions decided in [start, end], per second and kind; ``waiting``
    counts those decided before ``waiting_before`` whose provisioning is not ready."""
    rows = await pool.fetch(DECISIONS_PER_SECOND, account_id, start, end, waiting_before)
    return [
        DecisionCount(
            second=r["second"],
            decision=r["decision"],
            count=r["n"],
            waiting=r["waiting"],
            oldest_waiting=r["oldest_waiting"],
        )
        for r in rows
    ]


async def devices_per_second(
    pool: Pool,
    account_id: str,
    first_second: int,
    last_second: int,
    online_ttl_s: float,
    seen_after: datetime,
) -> list[DeviceSpan]:
    """The account's provisioned devices seen after ``seen_after`` (the window's start
    minus the online TTL), grouped by the seconds of the window [first_second, last_second]
    they were online in and the second they were provisioned in."""
    rows = await pool.fetch(
        DEVICES_PER_SECOND, account_id, seen_after, float(first_second), float(last_second), online_ttl_s
    )
    return [
        DeviceSpan(
            came=r["came"],
            gone=r["gone"],
            provisioned_second=r["provisioned_second"],
            disabled=r["disabled"],
            count=r["n"],
        )
        for r in rows
    ]
