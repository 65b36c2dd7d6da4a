"""Registry rows for the repository tests, written with plain SQL.

The repository tests (tests/integration/test_repository_*.py) set up accounts,
products, registrations and devices here rather than through shared.db.accounts and
shared.db.products, whose APIs are being rewritten: these INSERTs depend only on the
schema (shared/migrations). Every account gets a unique name, so tests never see each
other's rows, whichever runs at the same time on the same database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.db import bulk
from shared.db.pool import Connection, Pool
from shared.domain.products import SERVICE_TYPES


@dataclass(frozen=True)
class Service:
    name: str
    service_type: str
    port: int
    enabled: bool = True


# What create_product makes: the bulk service first (position 0), then the product's own.
DEFAULT_SERVICES = (Service("bulk", "rmt3", 65535), Service("ssh", "ssh", 22))


@dataclass(frozen=True)
class Product:
    id: str
    account_id: str
    service_ids: tuple[str, ...]  # in position order (position = index)


async def new_account(db: Pool | Connection) -> str:
    account_id = str(uuid.uuid4())
    await db.execute("INSERT INTO accounts (id, name) VALUES ($1, $2)", account_id, f"repo-{account_id}")
    return account_id


async def new_product(
    db: Pool | Connection,
    account_id: str,
    *,
    locked: bool = True,
    kind: str | None = None,
    services: Sequence[Service] = DEFAULT_SERVICES,
) -> Product:
    product_id = str(uuid.uuid4())
    await db.execute(
        """INSERT INTO products (id, account_id, name, status, product_code, registration_kind, locked_at)
           VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $4 = 'locked' THEN now() END)""",
        product_id,
        account_id,
        f"p-{product_id[:8]}",
        "locked" if locked else "new",
        str(uuid.uuid4()).upper() if locked else None,
        kind,
    )
    service_ids = tuple(str(uuid.uuid4()) for _ in services)
    await db.executemany(
        """INSERT INTO product_services
               (id, product_id, position, name, service_type, type_code, port, enabled, is_bulk_service)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        [
            (
                sid,
                product_id,
                i,
                s.name,
                s.service_type,
                SERVICE_TYPES[s.service_type],
                s.port,
                s.enabled,
                s.service_type == "rmt3",
            )
            for i, (sid, s) in enumerate(zip(service_ids, services, strict=True))
        ],
    )
    return Product(product_id, account_id, service_ids)


async def new_registration(
    db: Pool | Connection, product: Product, *, kind: str = "auto", status: str = "active"
) -> str:
    registration_id = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO registrations (id, account_id, product_id, kind, status) VALUES ($1, $2, $3, $4, $5)",
        registration_id,
        product.account_id,
        product.id,
        kind,
        status,
    )
    return registration_id


async def new_device(
    db: Pool | Connection,
    product: Product,
    registration_id: str,
    hardware_id: str,
    *,
    lifecycle: str = "registered",
    disabled: bool = False,
    fingerprint: str = "",
    key_digest: bytes | None = None,
    credential_generation: int = 1,
) -> str:
    device_id = str(uuid.uuid4())
    await db.execute(
        """INSERT INTO devices (id, account_id, product_id, registration_id, hardware_id, claimed_hardware_id,
                                name, lifecycle, disabled, fingerprint, registration_key_digest,
                                credential_generation)
           VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $9, $10, $11)""",
        device_id,
        product.account_id,
        product.id,
        registration_id,
        hardware_id,
        f"Device {hardware_id}",
        lifecycle,
        disabled,
        fingerprint,
        key_digest,
        credential_generation,
    )
    return device_id


async def wait_until_blocked(
    pool: Pool, pid: int, task: asyncio.Task[Any] | None = None, timeout_s: float = 10.0
) -> None:
    """Wait until the backend ``pid`` waits for a lock another transaction holds (or until
    ``task``, the one running on that backend, ended without waiting)."""
    async with asyncio.timeout(timeout_s):
        while not (task is not None and task.done()) and not await pool.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        ):
            await asyncio.sleep(0.01)


async def new_code(db: Pool | Connection, product_id: str, *, revoked: bool = False) -> str:
    """A Bulk Identification Code of the product (upper-case UUID form): its current one, or
    with ``revoked`` one it had before (a product has at most one current code)."""
    code = str(uuid.uuid4()).upper()
    await db.execute(
        """INSERT INTO bulk_identification_codes (code, product_id, revoked_at)
           VALUES ($1, $2, CASE WHEN $3 THEN now() END)""",
        code,
        product_id,
        revoked,
    )
    return code


async def wait_until_waiting_for(
    pool: Pool, holder_pid: int, count: int = 1, timeout_s: float = 10.0
) -> set[int]:
    """Wait until ``count`` backends wait, directly or queued behind one another, for a lock
    the backend ``holder_pid`` holds; their pids. For calls that take a connection of the
    pool themselves, whose backend the test cannot name in advance."""
    waiting: set[int] = set()
    async with asyncio.timeout(timeout_s):
        while len(waiting) < count:
            await asyncio.sleep(0.01)
            pids = await pool.fetchval(
                """WITH RECURSIVE waiting (pid) AS (
                       SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))
                       UNION
                       SELECT a.pid FROM pg_stat_activity a JOIN waiting w
                           ON w.pid = ANY(pg_blocking_pids(a.pid)))
                   SELECT coalesce(array_agg(pid), '{}') FROM waiting""",
                holder_pid,
            )
            waiting = set(pids)
    return waiting


async def claim_evidence(pool: Pool, code: str, hardware_id: str) -> bulk.ClaimEvidence | None:
    """The :class:`~shared.db.bulk.ClaimEvidence` part of :func:`shared.db.bulk.code_claim`:
    None when ``code`` is not a current code of a bulk product (unknown, revoked, or an
    auto product's)."""
    found = await bulk.code_claim(pool, code, hardware_id)
    return found.evidence if found is not None else None
