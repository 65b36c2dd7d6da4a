"""Registrations of a product's devices: an auto registration (devices admitted as they
claim the product's Bulk Identification Code) and its settings; the device quotas that
deduplication locks. Bulk uploads and their publishing: bulk.py."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import asyncpg

from shared.db import audit, hooks, products
from shared.db.pool import Connection, Pool
from shared.domain.accounts import Account
from shared.domain.products import RegistrationKind, registration_kind_refusal
from shared.errors import Conflict, InvalidInput, NotFound

# Run after the product's row is locked (products.product_state) and the rule checked.
CLAIM_PRODUCT_KIND = "UPDATE products SET registration_kind = $2 WHERE id = $1"
INSERT_REGISTRATION = """INSERT INTO registrations (id, account_id, product_id, kind, status, max_devices,
                                                attestation, primary_key_sealed, secondary_key_sealed,
                                                hardware_id_from, hook_url, hook_timeout_ms, hook_failure,
                                                hook_secret_sealed)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"""
SELECT_REGISTRATIONS = """
    SELECT r.id::text, r.product_id::text, r.kind, r.status, r.created_at, r.updated_at,
           c.code AS bulk_identification_code, r.max_devices, r.attestation, r.hardware_id_from,
           r.hook_url, r.hook_timeout_ms, r.hook_failure,
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
# The URL and its secret change together ($3: whether they change); a timeout or policy
# left NULL keeps its value. Returns the settings before the change, for the audit trail.
SET_HOOK = """
    WITH before AS (SELECT id, hook_url, hook_timeout_ms, hook_failure FROM registrations
                    WHERE id = $1 AND account_id = $2 AND kind = $8 AND status <> 'uploading'
                    FOR UPDATE)
    UPDATE registrations r
    SET hook_url = CASE WHEN $3 THEN $4 ELSE r.hook_url END,
        hook_secret_sealed = CASE WHEN $3 THEN $5 ELSE r.hook_secret_sealed END,
        hook_timeout_ms = COALESCE($6, r.hook_timeout_ms),
        hook_failure = COALESCE($7, r.hook_failure),
        updated_at = now()
    FROM before WHERE r.id = before.id
    RETURNING before.hook_url, before.hook_timeout_ms, before.hook_failure"""
SELECT_HOOK = """
    SELECT hook_url, hook_timeout_ms, hook_failure, hook_secret_sealed FROM registrations
    WHERE id = $1 AND hook_url IS NOT NULL"""
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
    # Its registration hook (docs/registration-hook.md): the URL (None: no hook), the call's
    # timeout in milliseconds and what a failed call does ("closed" or "open").
    hook_url: str | None = None
    hook_timeout_ms: int = 2000
    hook_failure: str = "closed"


@dataclass(frozen=True)
class Hook:
    """A registration's hook as set: its URL, timeout (ms), failure policy and signing
    secret sealed (shared.domain.hooks.HOOK_SECRETS, the registration's ID as associated
    data)."""

    url: str
    timeout_ms: int
    failure: str
    secret_sealed: bytes


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
    registration_id: str | None = None,
    hook: Hook | None = None,
) -> str:
    """Create a registration (its ID); a product serves one kind only
    (shared.domain.products.registration_kind_refusal), and one auto registration.
    ``max_devices`` is an auto registration's device quota (None: none); ``group_keys``
    (an auto registration in ``derived_key`` attestation: its ID and sealed keys) make it
    derived_key; ``x509`` makes it x509 (its devices' hardware IDs read from their
    certificates' ``hardware_id_from``), else it is ``code``. ``registration_id``: the ID
    its sealed secrets were sealed for (a new one by default); ``hook``: its registration
    hook. Audited as ``<kind>_registration.created`` (with the attestation and the hook's
    host, never a key or secret)."""
    account_id = actor.id
    if group_keys is not None:
        registration_id = group_keys.registration_id
    registration_id = registration_id or str(uuid.uuid4())
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
                hook.url if hook else None,
                hook.timeout_ms if hook else 2000,
                hook.failure if hook else "closed",
                hook.secret_sealed if hook else None,
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
            | ({"hardware_id_from": hardware_id_from} if x509 else {})
            | (
                hook_audit(hook.url, hook.timeout_ms, hook.failure) | {"hook_secret": "issued"}
                if hook
                else {}
            ),
        )
    return registration_id


def hook_audit(url: str | None, timeout_ms: int, failure: str) -> dict[str, object]:
    """A hook's settings for the audit trail: its URL's host only (a path or query often
    carries the receiver's own token), as webhooks are audited."""
    return {
        "hook_host": urlsplit(url).hostname if url else None,
        "hook_timeout_ms": timeout_ms,
        "hook_failure": failure,
    }


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
            hook_url=r["hook_url"],
            hook_timeout_ms=r["hook_timeout_ms"],
            hook_failure=r["hook_failure"],
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


# The audit trail's names of a registration of each kind: its actions' prefix (bulk
# registrations' actions were named ``bulk.*`` from the start) and its target type.
AUDIT_NAMES: dict[RegistrationKind, tuple[str, str]] = {
    "auto": ("auto_registration", "auto_registration"),
    "bulk": ("bulk", "bulk_registration"),
}


async def set_hook(
    pool: Pool,
    actor: Account,
    kind: RegistrationKind,
    registration_id: str,
    *,
    url_changes: bool,
    url: str | None = None,
    secret_sealed: bytes | None = None,
    timeout_ms: int | None = None,
    failure: str | None = None,
) -> None:
    """Change the hook of a registration of ``kind`` (a bulk registration in any state
    but uploading: its devices claim after it is published): with ``url_changes``, its URL
    and sealed secret (both None: no hook); a ``timeout_ms`` or ``failure`` given replaces
    that setting. NotFound outside the actor's account. Audited as
    ``auto_registration.hook_changed`` or ``bulk.hook_changed`` with the settings before
    and after (the URL's host, "hook_secret": "issued" when a new secret was made, never
    the secret)."""
    if url_changes and (url is None) != (secret_sealed is None):
        raise ValueError("a hook's URL and its secret are set or removed together")
    prefix, target = AUDIT_NAMES[kind]
    async with pool.acquire() as conn, conn.transaction():
        before = await conn.fetchrow(
            SET_HOOK, registration_id, actor.id, url_changes, url, secret_sealed, timeout_ms, failure, kind
        )
        if before is None:
            raise NotFound(f"no {kind} registration {registration_id} in this account")
        if not url_changes and before["hook_url"] is None:
            # A timeout or policy for a hook that is not there would be stored silently and
            # inherited by a URL set later (as at creation: rule required); rolled back.
            raise InvalidInput(
                "hook_timeout_ms and hook_failure need a hook: set hook_url too",
                field="hook_url",
                rule="required",
            )
        if url_changes and url is None:
            await hooks.without_hook(conn, registration_id)
        old = hook_audit(before["hook_url"], before["hook_timeout_ms"], before["hook_failure"])
        new = hook_audit(
            url if url_changes else before["hook_url"],
            timeout_ms if timeout_ms is not None else before["hook_timeout_ms"],
            failure if failure is not None else before["hook_failure"],
        )
        await audit.record(
            conn,
            actor,
            f"{prefix}.hook_changed",
            target,
            registration_id,
            {k: {"from": old[k], "to": new[k]} for k in old}
            | ({"hook_secret": "issued"} if url_changes and url is not None else {}),
        )


async def hook_of(pool: Pool, registration_id: str) -> Hook | None:
    """The registration's hook (None: it has none), its secret sealed."""
    row = await pool.fetchrow(SELECT_HOOK, registration_id)
    if row is None:
        return None
    return Hook(row["hook_url"], row["hook_timeout_ms"], row["hook_failure"], row["hook_secret_sealed"])


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
