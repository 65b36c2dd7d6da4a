"""Devices, registration decisions (the audit trail), lifecycle events and provisioning files.

Batch-shaped on purpose: the pipeline services read and write whole Kafka
batches with one statement per kind of change, not one round trip per device.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg

from shared.db.pool import Connection, Pool
from shared.domain.dedup import Claim, KnownDevice, Verdict
from shared.errors import Conflict, NotFound


class RegistryConflict(Exception):
    """Another writer took a hardware ID this batch meant to assign; decide the batch again."""


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
# Run after the registrations' rows are locked (products.lock_quotas): a statement of its
# own, so that it sees every device a transaction that held the lock before committed.
COUNT_REGISTRATION_DEVICES = """
    SELECT registration_id::text, count(*) AS devices FROM devices
    WHERE registration_id = ANY($1::uuid[]) GROUP BY registration_id"""
SELECT_IDEMPOTENT = """
    SELECT DISTINCT ON (idempotency_key) idempotency_key, device_id::text
    FROM registration_decisions
    WHERE product_id = $1 AND idempotency_key = ANY($2::text[]) AND device_id IS NOT NULL
    ORDER BY idempotency_key, decided_at"""
FAILED_CLAIMS = """
    SELECT claimed_hardware_id, count(*) AS failures FROM registration_decisions
    WHERE product_id = $1 AND claimed_hardware_id = ANY($2::text[]) AND decision = 'refused'
      AND reason = $3 AND decided_at > now() - make_interval(secs => $4)
    GROUP BY claimed_hardware_id"""
SELECT_DECIDED = """
    SELECT d.request_id::text, d.account_id::text, d.product_id::text, d.device_id::text,
           d.assigned_hardware_id, d.decision, d.reason, d.status,
           coalesce(v.credential_generation, 0) AS credential_generation
    FROM registration_decisions d LEFT JOIN devices v ON v.id = d.device_id
    WHERE d.request_id = ANY($1::uuid[])"""
INSERT_DEVICES = """
    INSERT INTO devices (id, account_id, product_id, registration_id, hardware_id, claimed_hardware_id,
                         name, lifecycle, fingerprint, registered_at)
    SELECT u.id, $1, $2, u.registration_id, u.hardware_id, u.claimed, u.name, 'registered',
           u.fingerprint, now()
    FROM unnest($3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[])
         AS u(id, registration_id, hardware_id, claimed, name, fingerprint)"""
CLAIM_PREREGISTERED = """
    UPDATE devices SET lifecycle = 'registered', fingerprint = u.fingerprint, registered_at = now()
    FROM unnest($1::uuid[], $2::text[]) AS u(id, fingerprint)
    WHERE devices.id = u.id AND devices.lifecycle = 'preregistered'"""
INSERT_DECISIONS = """
    INSERT INTO registration_decisions (request_id, account_id, product_id, device_id, claimed_hardware_id,
        assigned_hardware_id, decision, reason, idempotency_key, protocol, status, received_at)
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[],
                         $8::text[], $9::text[], $10::text[], $11::text[], $12::timestamptz[])
    ON CONFLICT (request_id) DO NOTHING"""
SELECT_PROVISIONING_INPUT = """
    SELECT v.id::text AS device_id, v.hardware_id, v.name, v.credential_generation,
           s.id::text AS provisioning_id, s.position, s.name AS service_name, s.type_code, s.port,
           f.service_uid, f.generation AS file_generation
    FROM devices v
    JOIN product_services s ON s.product_id = v.product_id AND s.enabled
    LEFT JOIN provisioning_files f ON f.device_id = v.id AND f.product_service_id = s.id
    WHERE v.id = ANY($1::uuid[])
    ORDER BY v.id, s.position"""
UPSERT_FILES = """
    INSERT INTO provisioning_files
        (device_id, product_service_id, generation, service_uid, file_name, size, sha256)
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::text[], $6::int[], $7::text[])
    ON CONFLICT (device_id, product_service_id) DO UPDATE
       SET generation = excluded.generation, file_name = excluded.file_name,
           size = excluded.size, sha256 = excluded.sha256
       WHERE provisioning_files.generation < excluded.generation"""
MARK_READY = """UPDATE registration_decisions SET status = 'ready', ready_at = now()
                WHERE request_id = ANY($1::uuid[]) AND status = 'decided'"""
SELECT_OUTCOME = """
    SELECT d.request_id::text, d.device_id::text, d.claimed_hardware_id, d.assigned_hardware_id,
           d.decision, d.reason, d.status, v.name, v.lifecycle, v.disabled, v.credential_generation
    FROM registration_decisions d LEFT JOIN devices v ON v.id = d.device_id
    WHERE d.request_id = $1"""
# One round trip for a device call: the device (to authenticate it) and its current files.
SELECT_DEVICE_WITH_FILES = """
    SELECT v.id::text, v.hardware_id, v.name, v.lifecycle, v.disabled, v.credential_generation,
           f.file_name, f.size, f.sha256, f.service_uid, s.id::text AS provisioning_id,
           s.position, s.name AS service_name, s.service_type, s.type_code, s.port
    FROM devices v
    LEFT JOIN provisioning_files f ON f.device_id = v.id AND f.generation = v.credential_generation
    LEFT JOIN product_services s ON s.id = f.product_service_id AND s.enabled
    WHERE v.id = $1
    ORDER BY s.position"""
MARK_PROVISIONED = """
    WITH changed AS (
        UPDATE devices SET lifecycle = 'provisioned', provisioned_at = to_timestamp(u.at),
                           last_seen_at = greatest(last_seen_at, to_timestamp(u.at))
        FROM unnest($1::uuid[], $2::float8[]) AS u(id, at)
        WHERE devices.id = u.id AND devices.lifecycle = 'registered' AND NOT devices.disabled
        RETURNING devices.id)
    INSERT INTO device_events (device_id, kind) SELECT id, 'ready' FROM changed"""
TOUCH_LAST_SEEN = """
    UPDATE devices SET last_seen_at = greatest(last_seen_at, to_timestamp(u.at))
    FROM unnest($1::uuid[], $2::float8[]) AS u(id, at) WHERE devices.id = u.id"""
SELECT_DEVICES = """
    SELECT id::text, hardware_id, claimed_hardware_id, name, category_a, category_b, lifecycle, disabled,
           product_id::text, registration_id::text, created_at, registered_at, provisioned_at, last_seen_at,
           credential_generation
    FROM devices
    WHERE account_id = $1
      AND ($2::text IS NULL OR lower(hardware_id) = lower($2))
      AND ($3::uuid IS NULL OR registration_id = $3)
      AND ($4::uuid IS NULL OR id > $4)
      AND ($5::uuid IS NULL OR id = $5)
      AND ($6::text IS NULL OR CASE
            WHEN $6 = 'disabled' THEN disabled
            WHEN $6 = 'online' THEN NOT disabled AND lifecycle = 'provisioned'
                 AND last_seen_at > now() - make_interval(secs => $7)
            WHEN $6 = 'offline' THEN NOT disabled AND NOT (lifecycle = 'provisioned'
                 AND coalesce(last_seen_at > now() - make_interval(secs => $7), false))
            ELSE NOT disabled AND lifecycle = $6 END)
    ORDER BY id LIMIT $8"""
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
SELECT_DECISIONS = """
    SELECT request_id::text, decided_at, decision, reason, claimed_hardware_id, assigned_hardware_id,
           device_id::text, product_id::text, protocol
    FROM registration_decisions
    WHERE account_id = $1 AND ($2::text IS NULL OR decision = $2)
      AND ($3::timestamptz IS NULL OR decided_at < $3
           OR (decided_at = $3 AND $5::uuid IS NOT NULL AND request_id < $5::uuid))
    ORDER BY decided_at DESC, request_id DESC LIMIT $4"""
# The intake LISTENs on fleetreg_invalidate (shared/db/throttle.py INVALIDATION_CHANNEL) to
# drop a cached device at once (payload ``device:<lower-case uuid>``); Postgres delivers a
# notification when, and only if, the transaction that sent it commits.
SELECT_FOR_CHANGE = """
    SELECT id::text, disabled FROM devices WHERE id = ANY($1::uuid[]) AND account_id = $2
    ORDER BY id FOR UPDATE"""
DISABLE_DEVICES = """
    WITH changed AS (
        UPDATE devices SET disabled = true
        WHERE id = ANY($1::uuid[]) AND account_id = $2 AND NOT disabled RETURNING id),
    events AS (INSERT INTO device_events (device_id, kind) SELECT id, 'disabled' FROM changed)
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
SELECT_DEVICES_BY_ID = """
    SELECT id::text, hardware_id, claimed_hardware_id, name, category_a, category_b, lifecycle, disabled,
           product_id::text, registration_id::text, created_at, registered_at, provisioned_at, last_seen_at,
           credential_generation
    FROM devices WHERE account_id = $1 AND id = ANY($2::uuid[])"""

DeviceAction = Literal["disable", "reset"]
# What an action did to one device: changed (disabled, reset), nothing to do (unchanged: it
# was disabled already), refused (conflict: a disabled device cannot be reset), not_found
# (no such device in this account, whatever other account may hold the ID).
ChangeOutcome = Literal["disabled", "reset", "unchanged", "conflict", "not_found"]


@dataclass(frozen=True)
class DeviceChange:
    device_id: str
    outcome: ChangeOutcome


@dataclass(frozen=True)
class StoredDecision:
    request_id: str
    account_id: str | None
    product_id: str | None
    device_id: str | None
    hardware_id: str
    decision: str
    reason: str
    status: str
    credential_generation: int


@dataclass(frozen=True)
class DecisionRecord:
    """One claim's verdict with the context the audit trail keeps."""

    claim: Claim
    verdict: Verdict
    account_id: str | None
    product_id: str | None
    received_at: float
    protocol: str


def _known(row: Any) -> KnownDevice:
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


async def load_idempotent(conn: Connection, product_id: str, keys: Sequence[str]) -> dict[str, str]:
    if not keys:
        return {}
    rows = await conn.fetch(SELECT_IDEMPOTENT, product_id, list(set(keys)))
    return {r["idempotency_key"]: r["device_id"] for r in rows}


async def count_registration_devices(conn: Connection, registration_ids: Sequence[str]) -> dict[str, int]:
    """Devices per registration (every registration asked for, 0 when it has none)."""
    if not registration_ids:
        return {}
    rows = await conn.fetch(COUNT_REGISTRATION_DEVICES, list(set(registration_ids)))
    counts = {r["registration_id"]: r["devices"] for r in rows}
    return {registration_id: counts.get(registration_id, 0) for registration_id in registration_ids}


async def failed_claims(
    conn: Connection, product_id: str, hardware_ids: Sequence[str], reason: str, window_s: float
) -> dict[str, int]:
    """Refusals with ``reason`` per claimed hardware ID within the window (brute-force guard)."""
    rows = await conn.fetch(FAILED_CLAIMS, product_id, list(set(hardware_ids)), reason, window_s)
    return {r["claimed_hardware_id"]: r["failures"] for r in rows}


async def decided(pool: Pool, request_ids: Sequence[str]) -> dict[str, StoredDecision]:
    """Requests decided before (a redelivered batch): their stored decisions."""
    rows = await pool.fetch(SELECT_DECIDED, list(request_ids))
    return {
        r["request_id"]: StoredDecision(
            request_id=r["request_id"],
            account_id=r["account_id"],
            product_id=r["product_id"],
            device_id=r["device_id"],
            hardware_id=r["assigned_hardware_id"] or "",
            decision=r["decision"],
            reason=r["reason"],
            status=r["status"],
            credential_generation=r["credential_generation"],
        )
        for r in rows
    }


async def record_decisions(conn: Connection, records: Sequence[DecisionRecord]) -> None:
    """Write new devices, claimed preregistered devices and every decision, in the caller's
    transaction. A hardware ID taken meanwhile by another writer raises RegistryConflict."""
    by_account: dict[tuple[str, str], list[Verdict]] = {}
    claimed: list[KnownDevice] = []
    for record in records:
        verdict = record.verdict
        if verdict.created and verdict.device and record.account_id and record.product_id:
            by_account.setdefault((record.account_id, record.product_id), []).append(verdict)
        elif verdict.claimed_preregistered and verdict.device:
            claimed.append(verdict.device)
    try:
        for (account_id, product_id), verdicts in by_account.items():
            devices = [v.device for v in verdicts if v.device]
            await conn.execute(
                INSERT_DEVICES,
                account_id,
                product_id,
                [d.id for d in devices],
                [d.registration_id for d in devices],
                [d.hardware_id for d in devices],
                [d.claimed_hardware_id for d in devices],
                [d.name for d in devices],
                [d.fingerprint for d in devices],
            )
    except asyncpg.UniqueViolationError as exc:
        raise RegistryConflict(str(exc)) from exc
    if claimed:
        await conn.execute(CLAIM_PREREGISTERED, [d.id for d in claimed], [d.fingerprint for d in claimed])
    columns: list[list[Any]] = [[] for _ in range(12)]
    for record in records:
        verdict, device = record.verdict, record.verdict.device
        values = (
            record.claim.request_id,
            record.account_id,
            record.product_id,
            device.id if device else None,
            record.claim.hardware_id,
            device.hardware_id if device and verdict.decision != "refused" else None,
            verdict.decision,
            verdict.reason,
            record.claim.idempotency_key or None,
            record.protocol,
            "refused" if verdict.decision == "refused" else "decided",
            datetime.fromtimestamp(record.received_at, UTC),
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    await conn.execute(INSERT_DECISIONS, *columns)


async def provisioning_input(conn: Connection, device_ids: Sequence[str]) -> list[Any]:
    return list(await conn.fetch(SELECT_PROVISIONING_INPUT, list(set(device_ids))))


async def next_service_uids(conn: Connection, count: int) -> list[int]:
    if count == 0:
        return []
    return [
        r[0] for r in await conn.fetch("SELECT nextval('service_uid_seq') FROM generate_series(1, $1)", count)
    ]


@dataclass(frozen=True)
class FileRow:
    device_id: str
    provisioning_id: str
    generation: int
    service_uid: str
    file_name: str
    size: int
    sha256: str


async def store_files(conn: Connection, files: Sequence[FileRow]) -> None:
    if files:
        await conn.execute(
            UPSERT_FILES,
            [f.device_id for f in files],
            [f.provisioning_id for f in files],
            [f.generation for f in files],
            [f.service_uid for f in files],
            [f.file_name for f in files],
            [f.size for f in files],
            [f.sha256 for f in files],
        )


async def mark_ready(conn: Connection, request_ids: Sequence[str]) -> None:
    if request_ids:
        await conn.execute(MARK_READY, list(request_ids))


async def outcome(pool: Pool, request_id: str) -> Any:
    return await pool.fetchrow(SELECT_OUTCOME, request_id)


async def device_with_files(pool: Pool, device_id: str) -> list[Any]:
    """Rows of the device joined with each current provisioning file (one row, file
    columns NULL, when it has none); empty when there is no such device."""
    return list(await pool.fetch(SELECT_DEVICE_WITH_FILES, device_id))


async def apply_signals(
    pool: Pool, ready: Sequence[tuple[str, float]], seen: Sequence[tuple[str, float]]
) -> None:
    """Confirmations and heartbeats of a batch, idempotent whatever the redelivery."""
    async with pool.acquire() as conn, conn.transaction():
        if ready:
            await conn.execute(MARK_PROVISIONED, [d for d, _ in ready], [a for _, a in ready])
        if seen:
            await conn.execute(TOUCH_LAST_SEEN, [d for d, _ in seen], [a for _, a in seen])


def _device_view(row: Any, online_ttl: float) -> dict[str, Any]:
    last_seen = row["last_seen_at"]
    online = (
        not row["disabled"]
        and row["lifecycle"] == "provisioned"
        and last_seen is not None
        and (datetime.now(UTC) - last_seen).total_seconds() < online_ttl
    )
    # The reference shows a device online or offline; the lifecycle step is its own field.
    state = "disabled" if row["disabled"] else "online" if online else "offline"

    return {
        "id": row["id"],
        "hardware_id": row["hardware_id"],
        "claimed_hardware_id": row["claimed_hardware_id"],
        "name": row["name"],
        "state": state,
        "lifecycle": row["lifecycle"],
        "online": online,
        "disabled": row["disabled"],
        "product_id": row["product_id"],
        "registration_id": row["registration_id"],
        "category_a": row["category_a"],
        "category_b": row["category_b"],
        "created_at": row["created_at"].isoformat(),
        "registered_at": row["registered_at"].isoformat() if row["registered_at"] else None,
        "provisioned_at": row["provisioned_at"].isoformat() if row["provisioned_at"] else None,
        "last_seen_at": last_seen.isoformat() if last_seen else None,
    }


async def list_devices(
    pool: Pool,
    account_id: str,
    *,
    state: str | None = None,
    hardware_id: str | None = None,
    registration_id: str | None = None,
    after: str | None = None,
    limit: int = 100,
    online_ttl: float = 300,
    device_id: str | None = None,
) -> list[dict[str, Any]]:
    """Devices of an account in ID order; ``after`` is the last ID of the previous page.

    ``state`` filters on the state shown (online, offline, disabled) or, for devices
    not disabled, on the lifecycle step (preregistered, registered)."""
    rows = await pool.fetch(
        SELECT_DEVICES, account_id, hardware_id, registration_id, after, device_id, state, online_ttl, limit
    )
    return [_device_view(r, online_ttl) for r in rows]


async def get_device(pool: Pool, account_id: str, device_id: str, online_ttl: float = 300) -> dict[str, Any]:
    found = await list_devices(pool, account_id, device_id=device_id, limit=1, online_ttl=online_ttl)
    if not found:
        raise NotFound(f"no device {device_id} in this account")
    device = found[0]
    device["history"] = [
        {"at": r["at"].isoformat(), "kind": r["kind"], **json.loads(r["detail"])}
        for r in await pool.fetch(SELECT_HISTORY, device_id)
    ]
    return device


async def list_decisions(
    pool: Pool,
    account_id: str,
    *,
    decision: str | None,
    before: datetime | None,
    limit: int,
    before_id: str | None = None,
) -> list[dict[str, Any]]:
    """The account's registration decisions, newest first: the audit trail, including
    refusals that created no device (a paused registration, a wrong bulk key, ...).
    ``before`` (and ``before_id``, the last request ID seen at that time: many decisions
    share one time) page back without skipping any."""
    rows = await pool.fetch(SELECT_DECISIONS, account_id, decision, before, limit, before_id)
    return [
        {
            "request_id": r["request_id"],
            "decided_at": r["decided_at"].isoformat(),
            "decision": r["decision"],
            "reason": r["reason"],
            "claimed_hardware_id": r["claimed_hardware_id"],
            "assigned_hardware_id": r["assigned_hardware_id"],
            "device_id": r["device_id"],
            "product_id": r["product_id"],
            "protocol": r["protocol"],
        }
        for r in rows
    ]


async def change_devices(
    pool: Pool, account_id: str, device_ids: Sequence[str], action: DeviceAction
) -> list[DeviceChange]:
    """Disable or reset the account's devices among ``device_ids`` in one transaction: one
    outcome per ID, in the order given. Every device changed is announced on
    ``fleetreg_invalidate`` in the same transaction. Another account's device is not found."""
    ids = [device_id.lower() for device_id in device_ids]
    async with pool.acquire() as conn, conn.transaction():
        found = {r["id"]: r["disabled"] for r in await conn.fetch(SELECT_FOR_CHANGE, ids, account_id)}
        statement = DISABLE_DEVICES if action == "disable" else RESET_DEVICES
        changed = {r["id"] for r in await conn.fetch(statement, list(found), account_id)}
    done: ChangeOutcome = "disabled" if action == "disable" else "reset"
    kept: ChangeOutcome = "unchanged" if action == "disable" else "conflict"
    return [
        DeviceChange(
            device_id, "not_found" if device_id not in found else done if device_id in changed else kept
        )
        for device_id in ids
    ]


async def devices_by_id(
    pool: Pool, account_id: str, device_ids: Sequence[str], online_ttl: float = 300
) -> dict[str, dict[str, Any]]:
    """The account's devices among ``device_ids``, by ID (others are absent)."""
    rows = await pool.fetch(SELECT_DEVICES_BY_ID, account_id, list(device_ids))
    return {r["id"]: _device_view(r, online_ttl) for r in rows}


async def disable_device(pool: Pool, account_id: str, device_id: str) -> None:
    """Disable one device (see :func:`change_devices`); an unknown one is not found."""
    (change,) = await change_devices(pool, account_id, [device_id], "disable")
    if change.outcome == "not_found":
        raise NotFound(f"no device {device_id} in this account")


async def reset_device(pool: Pool, account_id: str, device_id: str) -> None:
    """Reset for re-provisioning: the next claim of its hardware ID takes the device over,
    and its old device secret stops working."""
    (change,) = await change_devices(pool, account_id, [device_id], "reset")
    if change.outcome == "not_found":
        raise NotFound(f"no device {device_id} in this account")
    if change.outcome == "conflict":
        raise Conflict(f"device {device_id} is disabled; a disabled device cannot be reset")
