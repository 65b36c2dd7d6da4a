"""Products, their services and their Bulk Identification Codes (registrations: registrations.py)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db.pool import Connection, Pool
from shared.domain.admission import CodeAdmission
from shared.domain.identifiers import new_code
from shared.domain.products import MAX_SERVICES, ProductStatus, RegistrationKind, ServiceSpec, bulk_service
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
SELECT_PRODUCT_STATE = "SELECT status, registration_kind FROM products WHERE id = $1 AND account_id = $2"
LOCK_PRODUCT = """UPDATE products SET status = 'locked', product_code = $3, locked_at = now()
                  WHERE id = $1 AND account_id = $2 AND status = 'new' RETURNING id"""
INSERT_CODE = "INSERT INTO bulk_identification_codes (code, product_id) VALUES ($1, $2)"
REVOKE_CODES = (
    "UPDATE bulk_identification_codes SET revoked_at = now() WHERE product_id = $1 AND revoked_at IS NULL"
)
RESOLVE_CODES = """
    SELECT c.code, c.revoked_at IS NOT NULL AS revoked, p.id::text AS product_id,
           p.account_id::text AS account_id, r.id::text AS registration_id, r.kind, r.status
    FROM bulk_identification_codes c
    JOIN products p ON p.id = c.product_id
    LEFT JOIN registrations r ON r.product_id = p.id
         AND (r.kind = 'auto' OR r.status IN ('publishing', 'preregistered'))
    WHERE c.code = ANY($1::text[])"""


@dataclass(frozen=True)
class ProductService:
    """A service of a product; ``id`` is the provisioning ID (a UUID)."""

    id: str
    position: int
    name: str
    service_type: str
    type_code: int
    port: int
    enabled: bool
    is_bulk_service: bool


@dataclass(frozen=True)
class Product:
    """A product with its services in position order (the bulk service first). A locked
    product has a product code and a Bulk Identification Code; a new one has neither."""

    id: str
    name: str
    status: ProductStatus
    product_code: str | None
    registration_kind: RegistrationKind | None
    created_at: datetime
    bulk_identification_code: str | None
    services: tuple[ProductService, ...]


@dataclass(frozen=True)
class ProductState:
    """What decides which registrations a product may serve (domain: registration_kind_refusal)."""

    status: ProductStatus
    registration_kind: RegistrationKind | None


async def create_product(pool: Pool, account_id: str, name: str, services: Sequence[ServiceSpec]) -> Product:
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


async def add_service(pool: Pool, account_id: str, product_id: str, spec: ServiceSpec) -> Product:
    """Add a service; on a locked product it starts disabled [ref].

    Raises ``NotFound`` (no such product in the account), ``Conflict`` (a service of
    that name exists, or the product holds ``MAX_SERVICES`` services already, the limit
    product creation applies; the bulk service is not counted)."""
    async with pool.acquire() as conn, conn.transaction():
        state = await conn.fetchrow(SELECT_PRODUCT_STATE + " FOR UPDATE", product_id, account_id)
        if state is None:
            raise NotFound(f"no product {product_id} in this account")
        # Counted under the product's row lock, so two concurrent additions cannot both pass.
        held = await conn.fetchval(
            "SELECT count(*) FROM product_services WHERE product_id = $1 AND NOT is_bulk_service", product_id
        )
        if held >= MAX_SERVICES:
            raise Conflict(
                f"a product has at most {MAX_SERVICES} services; this one has {held}",
                field="services",
                rule=f"max_items={MAX_SERVICES}",
            )
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


async def list_products(pool: Pool, account_id: str, product_id: str | None = None) -> list[Product]:
    """The account's products (or the one asked for), oldest first."""
    rows = await pool.fetch(SELECT_PRODUCTS, account_id, product_id)
    services = await pool.fetch(SELECT_SERVICES, [r["id"] for r in rows])
    by_product: dict[str, list[ProductService]] = {}
    for s in services:
        by_product.setdefault(s["product_id"], []).append(
            ProductService(
                id=s["id"],
                position=s["position"],
                name=s["name"],
                service_type=s["service_type"],
                type_code=s["type_code"],
                port=s["port"],
                enabled=s["enabled"],
                is_bulk_service=s["is_bulk_service"],
            )
        )
    return [
        Product(
            id=r["id"],
            name=r["name"],
            status=r["status"],
            product_code=r["product_code"],
            registration_kind=r["registration_kind"],
            created_at=r["created_at"],
            bulk_identification_code=r["bulk_identification_code"],
            services=tuple(by_product.get(r["id"], [])),
        )
        for r in rows
    ]


async def get_product(pool: Pool, account_id: str, product_id: str) -> Product:
    found = await list_products(pool, account_id, product_id)
    if not found:
        raise NotFound(f"no product {product_id} in this account")
    return found[0]


async def lock_product(pool: Pool, account_id: str, product_id: str) -> Product:
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


async def product_state(
    conn: Connection, account_id: str, product_id: str, *, for_update: bool = False
) -> ProductState | None:
    """The account's product's status and registration kind (None: no such product);
    ``for_update`` locks its row until the caller's transaction ends."""
    row = await conn.fetchrow(
        SELECT_PRODUCT_STATE + (" FOR UPDATE" if for_update else ""), product_id, account_id
    )
    return ProductState(status=row["status"], registration_kind=row["registration_kind"]) if row else None


async def replace_code(conn: Connection, product_id: str) -> None:
    """Revoke the product's Bulk Identification Code and give it a new one, in the caller's
    transaction; the old code stops working when it commits.

    The product's row is locked first: a concurrent rotation waits, then (its statements
    taking fresh snapshots) revokes the code the first one created, instead of finding
    nothing to revoke and breaking the one-current-code index with a second code."""
    await conn.execute("SELECT 1 FROM products WHERE id = $1 FOR UPDATE", product_id)
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
