"""Products, their services and their Bulk Identification Codes (registrations: registrations.py)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db import audit
from shared.db.pool import Connection, Pool
from shared.db.throttle import notify
from shared.domain.accounts import Account
from shared.domain.admission import CodeAdmission
from shared.domain.identifiers import new_code
from shared.domain.products import (
    MAX_SERVICES,
    ProductStatus,
    RegistrationKind,
    ServiceChange,
    ServiceSpec,
    bulk_service,
    service_change_refusal,
)
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
SELECT_SERVICE_FOR_CHANGE = """
    SELECT id::text, name, enabled, port, is_bulk_service FROM product_services
    WHERE product_id = $1 AND id = $2 FOR UPDATE"""
# A change of port or name alters the service's provisioning files: its revision moves on,
# and every device's file of the older revision is rendered again when that device next
# asks (shared.db.files.complete_device_files), never in one write for the whole fleet.
# ``changed_at`` is the reference protocol's configuration ``timestamp``: it moves forward
# by at least a second at every change, so a client comparing whole seconds always sees one.
UPDATE_SERVICE = """
    UPDATE product_services s
       SET enabled = $3, port = $4, name = $5,
           revision = s.revision + CASE WHEN s.port <> $4 OR s.name <> $5 THEN 1 ELSE 0 END,
           changed_at = greatest(
               now(), coalesce(s.changed_at, p.locked_at, p.created_at) + interval '1 second')
      FROM products p
     WHERE s.id = $1 AND p.id = s.product_id AND p.id = $2"""
# Devices' intakes drop every cached device of every product when a product's services
# change (shared.db.throttle's channel; services/intake/device_cache.py): edits are rare.
NOTIFY_PRODUCT = "SELECT pg_notify('fleetreg_invalidate', 'product:' || $1::text)"
# What uses a product: its registrations (auto, or bulk in any state, an upload still being
# checked included) and devices. Devices always belong to a registration; they are counted
# anyway so that the refusal names them.
SELECT_PRODUCT_USE = """
    SELECT (SELECT count(*) FROM registrations WHERE product_id = $1 AND kind = 'auto') AS auto,
           (SELECT count(*) FROM registrations WHERE product_id = $1 AND kind = 'bulk') AS bulk,
           (SELECT count(*) FROM devices WHERE product_id = $1) AS devices"""
DELETE_PRODUCT = "DELETE FROM products WHERE id = $1 AND account_id = $2"
# Sent on the invalidation channel (shared.db.throttle.notify) by every transaction that
# creates, revokes or deletes a code: each intake drops its cache of known and unknown
# codes (services/intake/code_cache.py). The codes themselves never travel.
CODES_CHANGED = "codes"
KNOWN_CODE = "SELECT EXISTS (SELECT 1 FROM bulk_identification_codes WHERE code = $1)"
CODE_REVOKED_AT = "SELECT revoked_at FROM bulk_identification_codes WHERE code = $1"
RESOLVE_CODES = """
    SELECT c.code, c.revoked_at IS NOT NULL AS revoked, p.id::text AS product_id,
           p.account_id::text AS account_id, r.id::text AS registration_id, r.kind, r.status,
           r.hook_url IS NOT NULL AS hooked,
           CASE WHEN r.hook_url IS NULL THEN 0 ELSE r.hook_timeout_ms END AS hook_timeout_ms
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


def _spec(spec: ServiceSpec) -> dict[str, object]:
    """A service as the audit trail records it."""
    return {"name": spec.name, "type": spec.service_type, "port": spec.port, "enabled": spec.enabled}


async def create_product(pool: Pool, actor: Account, name: str, services: Sequence[ServiceSpec]) -> Product:
    """A new product of the actor's account with the bulk service first, then ``services``;
    audited as ``product.created``. Conflict (409) when the account has a product of that name."""
    product_id = str(uuid.uuid4())
    async with pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute(INSERT_PRODUCT, product_id, actor.id, name)
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
        await audit.record(
            conn,
            actor,
            "product.created",
            "product",
            product_id,
            {"name": name, "services": [_spec(s) for s in services]},
        )
    return await get_product(pool, actor.id, product_id)


async def add_service(pool: Pool, actor: Account, product_id: str, spec: ServiceSpec) -> Product:
    """Add a service; on a locked product it starts disabled [ref] (enable it with
    :func:`change_service`). Audited as ``product.service_added``.

    Raises ``NotFound`` (no such product in the account), ``Conflict`` (a service of
    that name exists, or the product holds ``MAX_SERVICES`` services already, the limit
    product creation applies; the bulk service is not counted)."""
    async with pool.acquire() as conn, conn.transaction():
        state = await conn.fetchrow(SELECT_PRODUCT_STATE + " FOR UPDATE", product_id, actor.id)
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
        added = {**_spec(spec), "enabled": enabled}
        await audit.record(conn, actor, "product.service_added", "product", product_id, added)
    return await get_product(pool, actor.id, product_id)


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


async def lock_product(pool: Pool, actor: Account, product_id: str) -> Product:
    """Lock a product (one-way): creates its Bulk Identification Code and product code.
    Audited as ``product.locked`` (the codes are named as created, never copied)."""
    async with pool.acquire() as conn, conn.transaction():
        locked = await conn.fetchval(LOCK_PRODUCT, product_id, actor.id, new_code())
        if locked is None:
            state = await conn.fetchrow(SELECT_PRODUCT_STATE, product_id, actor.id)
            if state is None:
                raise NotFound(f"no product {product_id} in this account")
            raise Conflict(f"product {product_id} is locked already")
        await conn.execute(INSERT_CODE, new_code(), product_id)
        await notify(conn, CODES_CHANGED)
        await audit.record(
            conn,
            actor,
            "product.locked",
            "product",
            product_id,
            {"status": {"from": "new", "to": "locked"}, "bulk_identification_code": "created"},
        )
    return await get_product(pool, actor.id, product_id)


async def change_service(
    pool: Pool, actor: Account, product_id: str, service_id: str, change: ServiceChange
) -> Product:
    """Enable or disable a service, change its port (and, while the product is new, its
    name); the product as it is then. Audited as ``product.service_changed`` with each
    field's old and new value; an edit that changes nothing records nothing.

    Devices pick the change up at their next boot, without a reset: the change is
    announced on ``fleetreg_invalidate`` (``product:<id>``) so no intake keeps serving
    a cached manifest, and a device's file for a service enabled (or changed) after it
    was provisioned is rendered when that device next asks for it. A disabled service
    drops out of manifests and the reference protocol's project lists; each device keeps
    its UID for it, for when it is enabled again.

    ``service_id`` is the service's provisioning ID (a UUID, either case). Raises NotFound
    (no such product in the account, or no such service of it) and Conflict (the bulk
    service; a locked product's service renamed; a name in use)."""
    try:  # parsed here, so the driver never refuses a caller's text with its value in the error
        service = uuid.UUID(service_id)
    except ValueError:
        raise NotFound(f"product {product_id} has no service {service_id}", field="service_id") from None
    async with pool.acquire() as conn, conn.transaction():
        # The product's row first, as add_service and lock_product take it: one order of locks.
        state = await product_state(conn, actor.id, product_id, for_update=True)
        if state is None:
            raise NotFound(f"no product {product_id} in this account")
        found = await conn.fetchrow(SELECT_SERVICE_FOR_CHANGE, product_id, service)
        if found is None:
            raise NotFound(f"product {product_id} has no service {service_id}", field="service_id")
        service_name = found["name"]
        refusal = service_change_refusal(
            product_id, service_name, state.status, found["is_bulk_service"], change
        )
        if refusal is not None:
            raise refusal
        changed = change.changed_from(found["enabled"], found["port"], found["name"])
        if changed:
            try:
                await conn.execute(
                    UPDATE_SERVICE,
                    uuid.UUID(found["id"]),
                    product_id,
                    found["enabled"] if change.enabled is None else change.enabled,
                    found["port"] if change.port is None else change.port,
                    found["name"] if change.name is None else change.name,
                )
            except asyncpg.UniqueViolationError as exc:
                raise Conflict(
                    f"the product has a service named {change.name!r} already", field="name"
                ) from exc
            await conn.execute(NOTIFY_PRODUCT, product_id)
            await audit.record(
                conn,
                actor,
                "product.service_changed",
                "product",
                product_id,
                {"service": service_name, "provisioning_id": found["id"].upper(), **changed},
            )
    return await get_product(pool, actor.id, product_id)


async def delete_product(pool: Pool, actor: Account, product_id: str) -> None:
    """Delete a product no registration and no device uses, with its services and its
    codes (a device presenting one is then told the code is unknown). Audited as
    ``product.deleted`` (its name and state, never a code).

    Raises NotFound (no such product in the account) and Conflict (409) naming what uses
    it. The product's row is locked first: a registration created at the same moment
    (which locks it too) either comes first, and is named, or waits and finds no product."""
    async with pool.acquire() as conn, conn.transaction():
        state = await product_state(conn, actor.id, product_id, for_update=True)
        if state is None:
            raise NotFound(f"no product {product_id} in this account")
        use = await conn.fetchrow(SELECT_PRODUCT_USE, product_id)
        assert use is not None  # scalar subqueries: always one row
        users = [
            f"{count} {what}"
            for count, what in (
                (use["auto"], "auto registration"),
                (use["bulk"], "bulk registration(s)"),
                (use["devices"], "device(s)"),
            )
            if count
        ]
        if users:
            raise Conflict(
                f"product {product_id} is in use by {', '.join(users)}: "
                "only a product no registration and no device uses can be deleted "
                "(delete its devices and cancel its configured bulk registrations first; "
                "an auto registration stays with its product: pause it instead)",
                field="product_id",
                rule="product_unused",
            )
        name = await conn.fetchval("SELECT name FROM products WHERE id = $1", product_id)
        await conn.execute(DELETE_PRODUCT, product_id, actor.id)
        if state.status == "locked":
            await notify(conn, CODES_CHANGED)  # its code is unknown from now on
        await audit.record(
            conn,
            actor,
            "product.deleted",
            "product",
            product_id,
            {"name": name, "status": state.status, "bulk_identification_code": "deleted"}
            if state.status == "locked"
            else {"name": name, "status": state.status},
        )


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
    await notify(conn, CODES_CHANGED)


async def known_code(pool: Pool, code: str) -> bool:
    """Whether ``code`` (canonical form: shared.domain.identifiers.normalize_code) is a
    Bulk Identification Code of the registry, current or revoked: one index read."""
    return bool(await pool.fetchval(KNOWN_CODE, code))


async def code_revoked_at(pool: Pool, code: str) -> datetime | None:
    """When ``code`` (canonical form) was revoked by a rotation; None for a current or
    unknown code: one index read."""
    revoked: datetime | None = await pool.fetchval(CODE_REVOKED_AT, code)
    return revoked


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
            hooked=r["hooked"] or False,
            hook_timeout_ms=r["hook_timeout_ms"],
        )
        for r in rows
    }
