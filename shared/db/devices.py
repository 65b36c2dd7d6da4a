"""Devices: the family of a hardware ID (for deduplication), lifecycle signals, the
operator's listing, history and changes.

Batch-shaped on purpose: the pipeline services read and write whole Kafka
batches with one statement per kind of change, not one round trip per device.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from asyncpg import Record

from shared.db import audit
from shared.db.pool import Connection, Pool
from shared.domain.accounts import Account
from shared.domain.dedup import KnownDevice, Lifecycle
from shared.errors import Conflict, NotFound

SELECT_FAMILY = """
    SELECT id::text, hardware_id, claimed_hardware_id, name, fingerprint, lifecycle, disabled,
           credential_generation, registration_id::text,
           coalesce(encode(registration_key_digest, 'hex'), '') AS registration_key_digest,
           extract(epoch FROM created_at)::float8 AS created_at,
           -- the latest registration that created or took over the device carried a key
           coalesce((SELECT d.idempotency_key IS NOT NULL FROM registration_decisions d
                     WHERE d.device_id = devices.id AND d.decision IN ('new', 'clone')
                     ORDER BY d.decided_at DESC LIMIT 1), false) AS registered_with_key
    FROM devices WHERE account_id = $1 AND hardware_id_stem = ANY($2::text[])"""
# Run after the registrations' rows are locked (registrations.lock_quotas): a statement of its
# own, so that it sees every device a transaction that held the lock before committed.
COUNT_REGISTRATION_DEVICES = """
    SELECT registration_id::text, count(*) AS devices FROM devices
    WHERE registration_id = ANY($1::uuid[]) GROUP BY registration_id"""
MARK_PROVISIONED = """
    WITH changed AS (
        UPDATE devices SET lifecycle = 'provisioned', provisioned_at = to_timestamp(u.at),
                           last_seen_at = greatest(last_seen_at, to_timestamp(u.at))
        -- one row per device: UPDATE ... FROM applies only one joined row per target row
        FROM (SELECT id, min(at) AS at FROM unnest($1::uuid[], $2::float8[]) AS b(id, at) GROUP BY id) AS u
        WHERE devices.id = u.id AND devices.lifecycle = 'registered' AND NOT devices.disabled
        RETURNING devices.id)
    INSERT INTO device_events (device_id, kind) SELECT id, 'ready' FROM changed"""
TOUCH_LAST_SEEN = """
    UPDATE devices SET last_seen_at = greatest(last_seen_at, to_timestamp(u.at))
    FROM (SELECT id, max(at) AS at FROM unnest($1::uuid[], $2::float8[]) AS b(id, at) GROUP BY id) AS u
    WHERE devices.id = u.id"""
# The state filter: the state shown (online, offline, disabled) or, for devices not disabled,
# the lifecycle step. Online is shared.domain.devices.is_online, with $6 its cut-off time
# (online_cutoff): not disabled, provisioned, last seen strictly after the cut-off.
SELECT_DEVICES = """
    SELECT id::text, hardware_id, claimed_hardware_id, name, category_a, category_b, lifecycle, disabled,
           product_id::text, registration_id::text, created_at, registered_at, provisioned_at, last_seen_at,
           credential_generation
    FROM devices
    WHERE account_id = $1
      AND ($2::text IS NULL OR lower(hardware_id) = lower($2))
      AND ($3::uuid IS NULL OR registration_id = $3)
      AND ($4::uuid IS NULL OR id > $4)
      AND ($5::text IS NULL OR CASE
            WHEN $5 = 'disabled' THEN disabled
            WHEN $5 = 'online' THEN NOT disabled AND lifecycle = 'provisioned'
                 AND last_seen_at > $6::timestamptz
            WHEN $5 = 'offline' THEN NOT disabled AND NOT (lifecycle = 'provisioned'
                 AND coalesce(last_seen_at > $6::timestamptz, false))
            ELSE NOT disabled AND lifecycle = $5 END)
    ORDER BY id LIMIT $7"""
SELECT_HISTORY = """
    SELECT decided_at AS at, 'registration' AS kind,
           jsonb_build_object('decision', decision, 'reason', reason,
                              'claimed_hardware_id', claimed_hardware_id,
                              'assigned_hardware_id', assigned_hardware_id, 'request_id', request_id,
                              'protocol', protocol) AS detail
    FROM registration_decisions WHERE device_id = $1
    UNION ALL
    SELECT at, kind, detail FROM device_events WHERE device_id = $1
    ORDER BY at"""
# The intake LISTENs on fleetreg_invalidate (shared/db/throttle.py INVALIDATION_CHANNEL) to
# drop a cached device at once (payload ``device:<lower-case uuid>``); Postgres delivers a
# notification when, and only if, the transaction that sent it commits.
SELECT_FOR_CHANGE = """
    SELECT id::text, disabled, hardware_id, name, lifecycle, credential_generation,
           product_id::text, registration_id::text
    FROM devices WHERE id = ANY($1::uuid[]) AND account_id = $2
    ORDER BY id FOR UPDATE"""
DISABLE_DEVICES = """
    WITH changed AS (
        UPDATE devices SET disabled = true
        WHERE id = ANY($1::uuid[]) AND account_id = $2 AND NOT disabled RETURNING id),
    events AS (INSERT INTO device_events (device_id, kind) SELECT id, 'disabled' FROM changed)
    SELECT id::text, pg_notify('fleetreg_invalidate', 'device:' || id::text) FROM changed"""
ENABLE_DEVICES = """
    WITH changed AS (
        UPDATE devices SET disabled = false
        WHERE id = ANY($1::uuid[]) AND account_id = $2 AND disabled RETURNING id),
    events AS (INSERT INTO device_events (device_id, kind) SELECT id, 'enabled' FROM changed)
    SELECT id::text, pg_notify('fleetreg_invalidate', 'device:' || id::text) FROM changed"""
RESET_DEVICES = """
    WITH changed AS (
        UPDATE devices SET lifecycle = 'preregistered', credential_generation = credential_generation + 1,
                           fingerprint = '', provisioned_at = NULL
        WHERE id = ANY($1::uuid[]) AND account_id = $2 AND NOT disabled
        RETURNING id, credential_generation),
    events AS (
        INSERT INTO device_events (device_id, kind, detail)
        SELECT id, 'reset', jsonb_build_object('credential_generation', credential_generation) FROM changed)
    SELECT id::text, pg_notify('fleetreg_invalidate', 'device:' || id::text) FROM changed"""
# Decommissioning: the device's row goes with its events and files (ON DELETE CASCADE), so
# its hardware ID is free for a new device, without an index; its registration decisions
# stay, without the device (device_id SET NULL), and the operator audit trail keeps its
# hardware ID and name. Its intake cache entries are dropped like a disabled device's.
DELETE_DEVICES = """
    WITH gone AS (DELETE FROM devices WHERE id = ANY($1::uuid[]) AND account_id = $2 RETURNING id)
    SELECT id::text, pg_notify('fleetreg_invalidate', 'device:' || id::text) FROM gone"""
STATEMENTS = {
    "disable": DISABLE_DEVICES,
    "enable": ENABLE_DEVICES,
    "reset": RESET_DEVICES,
    "delete": DELETE_DEVICES,
}
SELECT_DEVICES_BY_ID = """
    SELECT id::text, hardware_id, claimed_hardware_id, name, category_a, category_b, lifecycle, disabled,
           product_id::text, registration_id::text, created_at, registered_at, provisioned_at, last_seen_at,
           credential_generation
    FROM devices WHERE account_id = $1 AND id = ANY($2::uuid[])"""

DeviceAction = Literal["disable", "enable", "reset", "delete"]
# What an action did to one device: changed (disabled, enabled, reset, deleted), nothing to
# do (unchanged: it was disabled, or enabled, already), refused (conflict: a disabled device
# cannot be reset), not_found (no such device in this account, whatever other account may
# hold the ID).
ChangeOutcome = Literal["disabled", "enabled", "reset", "deleted", "unchanged", "conflict", "not_found"]
DONE: dict[DeviceAction, ChangeOutcome] = {
    "disable": "disabled",
    "enable": "enabled",
    "reset": "reset",
    "delete": "deleted",
}
# The operator audit trail's action for each (one event per device changed).
AUDITED = {
    "disable": "device.disabled",
    "enable": "device.enabled",
    "reset": "device.reset",
    "delete": "device.deleted",
}


@dataclass(frozen=True)
class DeviceChange:
    device_id: str
    outcome: ChangeOutcome


@dataclass(frozen=True)
class Device:
    """A device as its operator sees it. Whether it is online is not stored: it follows from
    ``disabled``, ``lifecycle`` and ``last_seen_at`` (shared.domain.devices)."""

    id: str
    hardware_id: str
    claimed_hardware_id: str
    name: str
    category_a: str
    category_b: str
    lifecycle: Lifecycle
    disabled: bool
    product_id: str
    registration_id: str
    created_at: datetime
    registered_at: datetime | None
    provisioned_at: datetime | None
    last_seen_at: datetime | None
    credential_generation: int


@dataclass(frozen=True)
class DeviceHistoryEntry:
    """One event of a device's life: a registration decision or a device event (ready,
    disabled, reset...), with its details (a JSON object, as recorded)."""

    at: datetime
    kind: str
    detail: Mapping[str, object]


def _known(row: Record) -> KnownDevice:
    return KnownDevice(
        id=row["id"],
        hardware_id=row["hardware_id"],
        claimed_hardware_id=row["claimed_hardware_id"],
        name=row["name"],
        fingerprint=row["fingerprint"],
        lifecycle=row["lifecycle"],
        disabled=row["disabled"],
        credential_generation=row["credential_generation"],
        registration_id=row["registration_id"],
        registration_key_digest=row["registration_key_digest"],
        created_at=row["created_at"],
        registered_with_key=row["registered_with_key"],
    )


async def load_family(conn: Connection, account_id: str, stems: Sequence[str]) -> list[KnownDevice]:
    return [_known(r) for r in await conn.fetch(SELECT_FAMILY, account_id, list(set(stems)))]


async def count_registration_devices(conn: Connection, registration_ids: Sequence[str]) -> dict[str, int]:
    """Devices per registration (every registration asked for, 0 when it has none)."""
    if not registration_ids:
        return {}
    rows = await conn.fetch(COUNT_REGISTRATION_DEVICES, list(set(registration_ids)))
    counts = {r["registration_id"]: r["devices"] for r in rows}
    return {registration_id: counts.get(registration_id, 0) for registration_id in registration_ids}


async def apply_signals(
    pool: Pool, ready: Sequence[tuple[str, float]], seen: Sequence[tuple[str, float]]
) -> None:
    """Confirmations and heartbeats of a batch, idempotent whatever the redelivery."""
    async with pool.acquire() as conn, conn.transaction():
        if ready:
            await conn.execute(MARK_PROVISIONED, [d for d, _ in ready], [a for _, a in ready])
        if seen:
            await conn.execute(TOUCH_LAST_SEEN, [d for d, _ in seen], [a for _, a in seen])


def _device(row: Record) -> Device:
    return Device(
        id=row["id"],
        hardware_id=row["hardware_id"],
        claimed_hardware_id=row["claimed_hardware_id"],
        name=row["name"],
        category_a=row["category_a"],
        category_b=row["category_b"],
        lifecycle=row["lifecycle"],
        disabled=row["disabled"],
        product_id=row["product_id"],
        registration_id=row["registration_id"],
        created_at=row["created_at"],
        registered_at=row["registered_at"],
        provisioned_at=row["provisioned_at"],
        last_seen_at=row["last_seen_at"],
        credential_generation=row["credential_generation"],
    )


async def list_devices(
    pool: Pool,
    account_id: str,
    *,
    online_cutoff: datetime,
    state: str | None = None,
    hardware_id: str | None = None,
    registration_id: str | None = None,
    after: str | None = None,
    limit: int = 100,
) -> list[Device]:
    """Devices of an account in ID order; ``after`` is the last ID of the previous page.

    ``state`` filters on the state shown (online, offline, disabled) or, for devices
    not disabled, on the lifecycle step (preregistered, registered); online means seen
    strictly after ``online_cutoff`` (shared.domain.devices.online_cutoff)."""
    rows = await pool.fetch(
        SELECT_DEVICES,
        account_id,
        hardware_id,
        registration_id,
        after,
        state,
        online_cutoff,
        limit,
    )
    return [_device(r) for r in rows]


async def get_device(pool: Pool, account_id: str, device_id: str) -> Device:
    """The account's device, or NotFound."""
    found = await pool.fetch(SELECT_DEVICES_BY_ID, account_id, [device_id])
    if not found:
        raise NotFound(f"no device {device_id} in this account")
    return _device(found[0])


async def device_history(pool: Pool, device_id: str) -> list[DeviceHistoryEntry]:
    """A device's registration decisions and events, oldest first (the caller checked
    that the device is the account's)."""
    return [
        DeviceHistoryEntry(at=r["at"], kind=r["kind"], detail=json.loads(r["detail"]))
        for r in await pool.fetch(SELECT_HISTORY, device_id)
    ]


async def change_devices(
    pool: Pool, actor: Account, device_ids: Sequence[str], action: DeviceAction
) -> list[DeviceChange]:
    """Disable, enable, reset or delete the actor's account's devices among ``device_ids``
    in one transaction: one outcome per ID, in the order given. Every device changed is
    announced on ``fleetreg_invalidate`` and recorded in the operator audit trail (one
    event each: ``device.disabled``, ``device.enabled``, ``device.reset``,
    ``device.deleted``) in the same transaction. Another account's device is not found."""
    ids = [device_id.lower() for device_id in device_ids]
    async with pool.acquire() as conn, conn.transaction():
        found = {r["id"]: r for r in await conn.fetch(SELECT_FOR_CHANGE, ids, actor.id)}
        changed = {r["id"] for r in await conn.fetch(STATEMENTS[action], list(found), actor.id)}
        await audit.record_many(
            conn,
            actor,
            AUDITED[action],
            "device",
            [(device_id, _audited(action, found[device_id])) for device_id in sorted(changed)],
        )
    kept: ChangeOutcome = "conflict" if action == "reset" else "unchanged"
    return [
        DeviceChange(
            device_id,
            "not_found" if device_id not in found else DONE[action] if device_id in changed else kept,
        )
        for device_id in ids
    ]


def _audited(action: DeviceAction, before: Record) -> dict[str, object]:
    """What the audit trail records of one device's change: the fields changed (old and
    new), with the hardware ID to read it by; a deletion keeps what identified the device."""
    shown: dict[str, object] = {"hardware_id": before["hardware_id"]}
    if action in ("disable", "enable"):
        shown["disabled"] = {"from": before["disabled"], "to": action == "disable"}
    elif action == "reset":
        generation = before["credential_generation"]
        shown["lifecycle"] = {"from": before["lifecycle"], "to": "preregistered"}
        shown["credential_generation"] = {"from": generation, "to": generation + 1}
    else:
        shown.update(
            name=before["name"],
            lifecycle=before["lifecycle"],
            disabled=before["disabled"],
            product_id=before["product_id"],
            registration_id=before["registration_id"],
        )
    return shown


async def devices_by_id(pool: Pool, account_id: str, device_ids: Sequence[str]) -> dict[str, Device]:
    """The account's devices among ``device_ids``, by ID (others are absent)."""
    rows = await pool.fetch(SELECT_DEVICES_BY_ID, account_id, list(device_ids))
    return {r["id"]: _device(r) for r in rows}


async def change_device(pool: Pool, actor: Account, device_id: str, action: DeviceAction) -> None:
    """One device's :func:`change_devices`: NotFound for a device not in the account;
    Conflict for a disabled device asked to reset (enable it first)."""
    (change,) = await change_devices(pool, actor, [device_id], action)
    if change.outcome == "not_found":
        raise NotFound(f"no device {device_id} in this account")
    if change.outcome == "conflict":
        raise Conflict(
            f"device {device_id} is disabled; a disabled device cannot be reset (enable it first)",
            rule="device_enabled",
        )
