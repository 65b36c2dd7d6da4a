"""Products, their services, Bulk Identification Codes and registrations."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from shared.db.pool import Connection, Pool
from shared.domain.admission import CodeAdmission
from shared.domain.identifiers import new_code
from shared.domain.products import ServiceSpec, bulk_service
from shared.errors import Conflict, NotFound

INSERT_PRODUCT = "INSERT INTO products (id, account_id, name) VALUES ($1, $2, $3)"
INSERT_SERVICE = """INSERT INTO product_services
    (id, product_id, position, name, service_type, type_code, port, enabled, is_bulk_service)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"""
SELECT_PRODUCTS = """
    SELECT p.id::text, p.name, p.status, p.product_code, p.registration_kind, p.created_at,
           c.code AS bulk_identification_code
    FROM products p LEFT JOIN bulk_identification_codes c ON c.product_id = p.id AND c.revoked_at IS NULL
    WHERE p.account_id = $1 AND ($2::uuid IS NULL OR p.id = $2)
    ORDER BY p.created_at, p.id"""
SELECT_SERVICES = """SELECT id::text, product_id::text, position, name, service_type, type_code, port,
                            enabled, is_bulk_service
                     FROM product_services WHERE product_id = ANY($1::uuid[]) ORDER BY position"""
LOCK_PRODUCT = """UPDATE products SET status = 'locked', product_code = $3, locked_at = now()
                  WHERE id = $1 AND account_id = $2 AND status = 'new' RETURNING id"""
INSERT_CODE = "INSERT INTO bulk_identification_codes (code, product_id) VALUES ($1, $2)"
REVOKE_CODES = (
    "UPDATE bulk_identification_codes SET revoked_at = now() WHERE product_id = $1 AND revoked_at IS NULL"
)
CLAIM_PRODUCT_KIND = """UPDATE products SET registration_kind = $3
    WHERE id = $1 AND account_id = $2 AND status = 'locked'
      AND (registration_kind IS NULL OR registration_kind = $3)
    RETURNING id"""
SELECT_PRODUCT_STATE = "SELECT status, registration_kind FROM products WHERE id = $1 AND account_id = $2"
INSERT_REGISTRATION = """INSERT INTO registrations (id, account_id, product_id, kind, status, max_devices)
                         VALUES ($1, $2, $3, $4, $5, $6)"""
SELECT_REGISTRATIONS = """
    SELECT r.id::text, r.product_id::text, r.kind, r.status, r.created_at, r.updated_at,
           c.code AS bulk_identification_code, r.max_devices,
           (SELECT count(*) FROM devices d WHERE d.registration_id = r.id) AS device_count
    FROM registrations r
    LEFT JOIN bulk_identification_codes c ON c.product_id = r.product_id AND c.revoked_at IS NULL
    WHERE r.account_id = $1 AND r.kind = $2 AND ($3::uuid IS NULL OR r.id = $3)
    ORDER BY r.created_at, r.id"""
SET_MAX_DEVICES = """UPDATE registrations SET max_devices = $4, updated_at = now()
    WHERE id = $1 AND account_id = $2 AND kind = $3 RETURNING id"""
SET_REGISTRATION_STATUS = """UPDATE registrations SET status = $4, updated_at = now()
    WHERE id = $1 AND account_id = $2 AND kind = $3 RETURNING product_id::text"""
# Rows of registrations without a quota are not locked: an unlimited registration pays
# nothing. Locked in ID order, so that two batches never wait for each other in a circle.
LOCK_QUOTAS = """
    SELECT id::text, max_devices FROM registrations
    WHERE id = ANY($1::uuid[]) AND max_devices IS NOT NULL
    ORDER BY id FOR UPDATE"""
RESOLVE_CODES = """
    SELECT c.code, c.revoked_at IS NOT NULL AS revoked, p.id::text AS product_id,
           p.account_id::text AS account_id, r.id::text AS registration_id, r.kind, r.status
    FROM bulk_identification_codes c
    JOIN products p ON p.id = c.product_id
    LEFT JOIN registrations r ON r.product_id = p.id
         AND (r.kind = 'auto' OR r.status IN ('publishing', 'preregistered'))
    WHERE c.code = ANY($1::text[])"""


async def create_product(
    pool: Pool, account_id: str, name: str, services: Sequence[ServiceSpec]
) -> dict[str, Any]:
    product_id = str(uuid.uuid4())
    async with pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute(INSERT_PRODUCT, product_id, account_id, name)
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(f"a product named {name!r} exists already in this account", field="name") from exc
        rows = [
            (
                uuid.uuid4(),
                product_id,
                position,
                s.name,
                s.service_type,
                s.type_code,
                s.port,
                s.enabled,
                position == 0,
            )
            for position, s in enumerate([bulk_service(), *services])
        ]
        await conn.executemany(INSERT_SERVICE, rows)
    return await get_product(pool, account_id, product_id)


async def add_service(pool: Pool, account_id: str, product_id: str, spec: ServiceSpec) -> dict[str, Any]:
    """Add a service; on a locked product it starts disabled [ref]."""
    async with pool.acquire() as conn, conn.transaction():
        state = await conn.fetchrow(SELECT_PRODUCT_STATE + " FOR UPDATE", product_id, account_id)
        if state is None:
            raise NotFound(f"no product {product_id} in this account")
        position = await conn.fetchval(
            "SELECT coalesce(max(position), 0) + 1 FROM product_services WHERE product_id = $1", product_id
        )
        enabled = spec.enabled and state["status"] == "new"
        try:
            await conn.execute(
                INSERT_SERVICE,
                uuid.uuid4(),
                product_id,
                position,
                spec.name,
                spec.service_type,
                spec.type_code,
                spec.port,
                enabled,
                False,
            )
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(f"the product has a service named {spec.name!r} already", field="name") from exc
    return await get_product(pool, account_id, product_id)


async def list_products(pool: Pool, account_id: str, product_id: str | None = None) -> list[dict[str, Any]]:
    rows = await pool.fetch(SELECT_PRODUCTS, account_id, product_id)
    services = await pool.fetch(SELECT_SERVICES, [r["id"] for r in rows])
    by_product: dict[str, list[dict[str, Any]]] = {}
    for s in services:
        by_product.setdefault(s["product_id"], []).append(
            {
                "provisioning_id": s["id"].upper(),
                "name": s["name"],
                "type": s["service_type"],
                "type_code": s["type_code"],
                "port": s["port"],
                "enabled": s["enabled"],
                "bulk_service": s["is_bulk_service"],
            }
        )
    products = []
    for r in rows:
        product: dict[str, Any] = {
            "id": r["id"],
            "name": r["name"],
            "status": r["status"],
            "registration_kind": r["registration_kind"],
            "created_at": r["created_at"].isoformat(),
            "services": by_product.get(r["id"], []),
        }
        if r["status"] == "locked":
            product["bulk_identification_code"] = r["bulk_identification_code"]
            product["product_code"] = r["product_code"]
        products.append(product)
    return products


async def get_product(pool: Pool, account_id: str, product_id: str) -> dict[str, Any]:
    found = await list_products(pool, account_id, product_id)
    if not found:
        raise NotFound(f"no product {product_id} in this account")
    return found[0]


async def lock_product(pool: Pool, account_id: str, product_id: str) -> dict[str, Any]:
    """Lock a product (one-way): creates its Bulk Identification Code and product code."""
    async with pool.acquire() as conn, conn.transaction():
        locked = await conn.fetchval(LOCK_PRODUCT, product_id, account_id, new_code())
        if locked is None:
            state = await conn.fetchrow(SELECT_PRODUCT_STATE, product_id, account_id)
            if state is None:
                raise NotFound(f"no product {product_id} in this account")
            raise Conflict(f"product {product_id} is locked already")
        await conn.execute(INSERT_CODE, new_code(), product_id)
    return await get_product(pool, account_id, product_id)


async def create_registration(
    pool: Pool, account_id: str, product_id: str, kind: str, status: str, max_devices: int | None = None
) -> str:
    """Create an auto or bulk registration; a product serves one kind only, and one auto.
    ``max_devices`` is an auto registration's device quota (None: none)."""
    registration_id = str(uuid.uuid4())
    async with pool.acquire() as conn, conn.transaction():
        claimed = await conn.fetchval(CLAIM_PRODUCT_KIND, product_id, account_id, kind)
        if claimed is None:
            state = await conn.fetchrow(SELECT_PRODUCT_STATE, product_id, account_id)
            if state is None:
                raise NotFound(f"no product {product_id} in this account", field="product_id")
            if state["status"] != "locked":
                raise Conflict(
                    f"product {product_id} must be locked first", field="product_id", rule="product_locked"
                )
            raise Conflict(
                f"product {product_id} serves {state['registration_kind']} registration already; "
                "a product is used by one auto registration or by bulk registrations, never both",
                field="product_id",
                rule="one_registration_kind",
            )
        try:
            await conn.execute(
                INSERT_REGISTRATION, registration_id, account_id, product_id, kind, status, max_devices
            )
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(
                f"product {product_id} has an auto registration already",
                field="product_id",
                rule="one_auto_registration",
            ) from exc
    return registration_id


async def list_registrations(
    pool: Pool, account_id: str, kind: str, registration_id: str | None = None
) -> list[dict[str, Any]]:
    return [
        {
            "id": r["id"],
            "product_id": r["product_id"],
            "kind": r["kind"],
            "status": r["status"],
            "bulk_identification_code": r["bulk_identification_code"],
            "max_devices": r["max_devices"],
            "device_count": r["device_count"],
            "created_at": r["created_at"].isoformat(),
            "updated_at": r["updated_at"].isoformat(),
        }
        for r in await pool.fetch(SELECT_REGISTRATIONS, account_id, kind, registration_id)
    ]


async def get_registration(pool: Pool, account_id: str, kind: str, registration_id: str) -> dict[str, Any]:
    found = await list_registrations(pool, account_id, kind, registration_id)
    if not found:
        raise NotFound(f"no {kind} registration {registration_id} in this account")
    return found[0]


async def set_registration_status(
    pool: Pool, account_id: str, kind: str, registration_id: str, status: str
) -> None:
    if await pool.fetchval(SET_REGISTRATION_STATUS, registration_id, account_id, kind, status) is None:
        raise NotFound(f"no {kind} registration {registration_id} in this account")


async def set_max_devices(pool: Pool, account_id: str, registration_id: str, max_devices: int | None) -> None:
    """Set (or, with None, clear) an auto registration's device quota. It applies to the
    claims decided after the answer; devices over a lowered quota are kept."""
    if await pool.fetchval(SET_MAX_DEVICES, registration_id, account_id, "auto", max_devices) is None:
        raise NotFound(f"no auto registration {registration_id} in this account")


async def rotate_code(pool: Pool, account_id: str, registration_id: str) -> None:
    """Replace the product's Bulk Identification Code; the old one stops working at once."""
    async with pool.acquire() as conn, conn.transaction():
        product_id = await conn.fetchval(
            "SELECT product_id::text FROM registrations WHERE id = $1 AND account_id = $2 AND kind = 'auto'",
            registration_id,
            account_id,
        )
        if product_id is None:
            raise NotFound(f"no auto registration {registration_id} in this account")
        await conn.execute(REVOKE_CODES, product_id)
        await conn.execute(INSERT_CODE, new_code(), product_id)


async def resolve_codes(pool: Pool, codes: Sequence[str]) -> dict[str, CodeAdmission]:
    rows = await pool.fetch(RESOLVE_CODES, list(set(codes)))
    return {
        r["code"]: CodeAdmission(
            code=r["code"],
            revoked=r["revoked"],
            account_id=r["account_id"],
            product_id=r["product_id"],
            registration_id=r["registration_id"],
            kind=r["kind"],
            status=r["status"],
        )
        for r in rows
    }


async def lock_quotas(conn: Connection, registration_ids: Sequence[str]) -> dict[str, int]:
    """The device quota (``max_devices``) of each registration that has one, its row locked
    until the caller's transaction ends, so that instances deciding claims of the same
    registration count its devices one after the other."""
    if not registration_ids:
        return {}
    rows = await conn.fetch(LOCK_QUOTAS, sorted(set(registration_ids)))
    return {r["id"]: r["max_devices"] for r in rows}
