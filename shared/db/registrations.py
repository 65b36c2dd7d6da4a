"""Registrations of a product's devices: an auto registration (devices admitted as they
claim the product's Bulk Identification Code) and its settings; the device quotas that
deduplication locks. Bulk uploads and their publishing: bulk.py."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db import audit, products
from shared.db.pool import Connection, Pool
from shared.domain.accounts import Account
from shared.domain.products import RegistrationKind, registration_kind_refusal
from shared.errors import Conflict, NotFound

# Run after the product's row is locked (products.product_state) and the rule checked.
CLAIM_PRODUCT_KIND = "UPDATE products SET registration_kind = $2 WHERE id = $1"
INSERT_REGISTRATION = """INSERT INTO registrations (id, account_id, product_id, kind, status, max_devices,
                                                attestation, primary_key_sealed, secondary_key_sealed,
                                                hardware_id_from)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"""
SELECT_REGISTRATIONS = """
    SELECT r.id::text, r.product_id::text, r.kind, r.status, r.created_at, r.updated_at,
           c.code AS bulk_identification_code, r.max_devices, r.attestation, r.hardware_id_from,
           (SELECT count(*) FROM devices d WHERE d.registration_id = r.id) AS device_count
    FROM registrations r
    LEFT JOIN bulk_identification_codes c ON c.product_id = r.product_id AND c.revoked_at IS NULL
    WHERE r.account_id = $1 AND r.kind = $2 AND ($3::uuid IS NULL OR r.id = $3)
    ORDER BY r.created_at, r.id"""
# Both return the value before the change (the row locked first), for the audit trail.
SET_MAX_DEVICES = """
    WITH before AS (SELECT id, max_devices FROM registrations
                    WHERE id = $1 AND account_id = $2 AND kind = $3 FOR UPDATE)
    UPDATE registrations r SET max_devices = $4, updated_at = now()
    FROM before WHERE r.id = before.id RETURNING before.id, before.max_devices"""
SET_REGISTRATION_STATUS = """
    WITH before AS (SELECT id, status FROM registrations
                    WHERE id = $1 AND account_id = $2 AND kind = $3 FOR UPDATE)
    UPDATE registrations r SET status = $4, updated_at = now()
    FROM before WHERE r.id = before.id RETURNING before.status"""
SELECT_AUTO_PRODUCT = (
    "SELECT product_id::text FROM registrations WHERE id = $1 AND account_id = $2 AND kind = 'auto'"
)
# Rows of registrations without a quota are not locked: an unlimited registration pays
# nothing. Locked in ID order, so that two batches never wait for each other in a circle.
LOCK_QUOTAS = """
    SELECT id::text, max_devices FROM registrations
    WHERE id = ANY($1::uuid[]) AND max_devices IS NOT NULL
    ORDER BY id FOR UPDATE"""


@dataclass(frozen=True)
class GroupKeys:
    """A new derived_key registration's ID and its two group keys, sealed
    (shared.domain.derived_keys.GroupKeyBox: the ID is their associated data)."""

    registration_id: str
    primary_sealed: bytes
    secondary_sealed: bytes


@dataclass(frozen=True)
class Registration:
    """A registration of a product's devices, with the product's current Bulk
    Identification Code and how many devices it registered so far."""

    id: str
    product_id: str
    kind: RegistrationKind
    status: str
    bulk_identification_code: str | None
    max_devices: int | None  # the device quota (auto registrations); None: none
    device_count: int
    created_at: datetime
    updated_at: datetime
    # How its devices prove they belong (shared.domain.derived_keys): "code", "derived_key"
    # or "x509"; for x509, where a device certificate names the hardware ID
    # (shared.domain.x509_attestation.HARDWARE_ID_SOURCES).
    attestation: str = "code"
    hardware_id_from: str = "cn"


async def create_registration(
    pool: Pool,
    actor: Account,
    product_id: str,
    kind: RegistrationKind,
    status: str,
    max_devices: int | None = None,
    group_keys: GroupKeys | None = None,
    *,
    x509: bool = False,
    hardware_id_from: str = "cn",
) -> str:
    """Create a registration (its ID); a product serves one kind only
    (shared.domain.products.registration_kind_refusal), and one auto registration.
    ``max_devices`` is an auto registration's device quota (None: none); ``group_keys``
    (an auto registration in ``derived_key`` attestation: its ID and sealed keys) make it
    derived_key; ``x509`` makes it x509 (its devices' hardware IDs read from their
    certificates' ``hardware_id_from``), else it is ``code``. Audited as
    ``<kind>_registration.created`` (with the attestation, never a key)."""
    account_id = actor.id
    registration_id = group_keys.registration_id if group_keys is not None else str(uuid.uuid4())
    attestation = "derived_key" if group_keys is not None else "x509" if x509 else "code"
    sealed = (group_keys.primary_sealed, group_keys.secondary_sealed) if group_keys else (None, None)
    async with pool.acquire() as conn, conn.transaction():
        # The product's row stays locked until the registration exists: a concurrent claim
        # of the other kind (bulk.finish_upload) sees this one's kind.
        state = await products.product_state(conn, account_id, product_id, for_update=True)
        if state is None:
            raise NotFound(f"no product {product_id} in this account", field="product_id")
        refusal = registration_kind_refusal(product_id, state.status, state.registration_kind, kind)
        if refusal is not None:
            raise refusal
        if state.registration_kind is None:
            await conn.execute(CLAIM_PRODUCT_KIND, product_id, kind)
        try:
            await conn.execute(
                INSERT_REGISTRATION,
                registration_id,
                account_id,
                product_id,
                kind,
                status,
                max_devices,
                attestation,
                *sealed,
                hardware_id_from,
            )
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(
                f"product {product_id} has an auto registration already",
                field="product_id",
                rule="one_auto_registration",
            ) from exc
        await audit.record(
            conn,
            actor,
            f"{kind}_registration.created",
            f"{kind}_registration",
            registration_id,
            {"product_id": product_id, "status": status, "max_devices": max_devices}
            | ({"attestation": attestation} if kind == "auto" else {})
            | ({"hardware_id_from": hardware_id_from} if x509 else {}),
        )
    return registration_id


async def list_registrations(
    pool: Pool, account_id: str, kind: RegistrationKind, registration_id: str | None = None
) -> list[Registration]:
    """The account's registrations of ``kind`` (or the one asked for), oldest first."""
    return [
        Registration(
            id=r["id"],
            product_id=r["product_id"],
            kind=r["kind"],
            status=r["status"],
            bulk_identification_code=r["bulk_identification_code"],
            max_devices=r["max_devices"],
            device_count=r["device_count"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            attestation=r["attestation"],
            hardware_id_from=r["hardware_id_from"],
        )
        for r in await pool.fetch(SELECT_REGISTRATIONS, account_id, kind, registration_id)
    ]


async def get_registration(
    pool: Pool, account_id: str, kind: RegistrationKind, registration_id: str
) -> Registration:
    found = await list_registrations(pool, account_id, kind, registration_id)
    if not found:
        raise NotFound(f"no {kind} registration {registration_id} in this account")
    return found[0]


# The audit action of a status change: pausing and resuming are what operators look for.
_STATUS_ACTIONS = {"paused": "paused", "active": "resumed"}


async def set_registration_status(
    pool: Pool, actor: Account, kind: RegistrationKind, registration_id: str, status: str
) -> None:
    """Set a registration's status (NotFound outside the actor's account); audited as
    ``<kind>_registration.paused`` / ``.resumed`` (``.status_changed`` otherwise) with the
    status before and after, also when it did not change (the operator did ask)."""
    async with pool.acquire() as conn, conn.transaction():
        before = await conn.fetchval(SET_REGISTRATION_STATUS, registration_id, actor.id, kind, status)
        if before is None:
            raise NotFound(f"no {kind} registration {registration_id} in this account")
        action = _STATUS_ACTIONS.get(status, "status_changed")
        await audit.record(
            conn,
            actor,
            f"{kind}_registration.{action}",
            f"{kind}_registration",
            registration_id,
            {"status": {"from": before, "to": status}},
        )


async def set_max_devices(pool: Pool, actor: Account, registration_id: str, max_devices: int | None) -> None:
    """Set (or, with None, clear) an auto registration's device quota. It applies to the
    claims decided after the answer; devices over a lowered quota are kept. Audited as
    ``auto_registration.quota_changed``."""
    async with pool.acquire() as conn, conn.transaction():
        before = await conn.fetchrow(SET_MAX_DEVICES, registration_id, actor.id, "auto", max_devices)
        if before is None:
            raise NotFound(f"no auto registration {registration_id} in this account")
        await audit.record(
            conn,
            actor,
            "auto_registration.quota_changed",
            "auto_registration",
            registration_id,
            {"max_devices": {"from": before["max_devices"], "to": max_devices}},
        )


async def rotate_code(pool: Pool, actor: Account, registration_id: str) -> None:
    """Replace the product's Bulk Identification Code; the old one stops working at once.
    Audited as ``auto_registration.code_rotated``: that it was rotated, never a code."""
    async with pool.acquire() as conn, conn.transaction():
        product_id = await conn.fetchval(SELECT_AUTO_PRODUCT, registration_id, actor.id)
        if product_id is None:
            raise NotFound(f"no auto registration {registration_id} in this account")
        await products.replace_code(conn, product_id)
        await audit.record(
            conn,
            actor,
            "auto_registration.code_rotated",
            "auto_registration",
            registration_id,
            {"product_id": product_id, "bulk_identification_code": "rotated"},
        )


async def lock_quotas(conn: Connection, registration_ids: Sequence[str]) -> dict[str, int]:
    """The device quota (``max_devices``) of each registration that has one, its row locked
    until the caller's transaction ends, so that instances deciding claims of the same
    registration count its devices one after the other."""
    if not registration_ids:
        return {}
    rows = await conn.fetch(LOCK_QUOTAS, sorted(set(registration_ids)))
    return {r["id"]: r["max_devices"] for r in rows}
