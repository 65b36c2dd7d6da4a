"""shared.db.products on the real Postgres: products and their services (the bulk service
first), locking (one way, with the product's codes), the product's state registrations are
checked against, and the Bulk Identification Codes deduplication and the intake resolve."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest

from shared.db import products
from shared.db.pool import Pool
from shared.db.products import Product, ProductState
from shared.domain.accounts import Account
from shared.domain.admission import CodeAdmission
from shared.domain.products import MAX_SERVICES, ServiceSpec
from shared.errors import Conflict, NotFound
from tests.support import registry

pytestmark = pytest.mark.integration

CODE = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}")
SPECS = (
    ServiceSpec("ssh", "ssh", 22, enabled=True),
    ServiceSpec("admin", "web", 8080, enabled=False),
    ServiceSpec("vnc", "vnc", 5900, enabled=True),
)


@pytest.fixture
async def account_id(pool: Pool) -> str:
    return await registry.new_account(pool)


async def _new(pool: Pool, account_id: str, name: str = "gateway") -> Product:
    return await products.create_product(pool, Account(account_id, "test"), name, SPECS)


def _shape(product: Product) -> list[tuple[int, str, str, int, int, bool, bool]]:
    return [
        (s.position, s.name, s.service_type, s.type_code, s.port, s.enabled, s.is_bulk_service)
        for s in product.services
    ]


async def test_create_product_puts_the_bulk_service_first_then_the_services_in_order(
    pool: Pool, account_id: str
) -> None:
    created = await _new(pool, account_id)

    assert (created.name, created.status, created.product_code, created.registration_kind) == (
        "gateway",
        "new",
        None,
        None,
    )
    assert created.bulk_identification_code is None
    assert _shape(created) == [
        (0, "bulk", "rmt3", 35, 65535, True, True),
        (1, "ssh", "ssh", 28, 22, True, False),
        (2, "admin", "web", 7, 8080, False, False),
        (3, "vnc", "vnc", 4, 5900, True, False),
    ]
    assert all(str(uuid.UUID(s.id)) == s.id for s in created.services)
    assert await products.get_product(pool, account_id, created.id) == created
    assert await products.list_products(pool, account_id) == [created]


async def test_a_product_name_is_unique_within_its_account_only(pool: Pool, account_id: str) -> None:
    first = await _new(pool, account_id, "twin")

    with pytest.raises(Conflict) as refused:
        await _new(pool, account_id, "twin")

    assert refused.value.field == "name"
    assert await products.list_products(pool, account_id) == [first]
    elsewhere = await _new(pool, await registry.new_account(pool), "twin")
    assert elsewhere.name == "twin"
    assert elsewhere.id != first.id


async def test_list_products_lists_the_accounts_products_oldest_first(pool: Pool, account_id: str) -> None:
    made = [await _new(pool, account_id, f"p{i}") for i in range(3)]
    await _new(pool, await registry.new_account(pool), "p9")

    assert [p.id for p in await products.list_products(pool, account_id)] == [p.id for p in made]
    assert await products.list_products(pool, account_id, made[1].id) == [made[1]]


async def test_add_service_appends_and_starts_disabled_on_a_locked_product(
    pool: Pool, account_id: str
) -> None:
    product = await _new(pool, account_id)

    before_lock = await products.add_service(
        pool, Account(account_id, "test"), product.id, ServiceSpec("rdp", "rdp", 3389, True)
    )
    await products.lock_product(pool, Account(account_id, "test"), product.id)
    after_lock = await products.add_service(
        pool, Account(account_id, "test"), product.id, ServiceSpec("smb", "smb", 445, True)
    )

    assert _shape(before_lock)[-1] == (4, "rdp", "rdp", 5, 3389, True, False)
    assert _shape(after_lock)[-2:] == [
        (4, "rdp", "rdp", 5, 3389, True, False),
        (5, "smb", "smb", 34, 445, False, False),  # asked enabled: starts disabled
    ]
    assert after_lock.status == "locked"


async def test_a_service_name_is_unique_within_a_product(pool: Pool, account_id: str) -> None:
    product = await _new(pool, account_id)

    for name in ("ssh", "bulk"):
        with pytest.raises(Conflict) as refused:
            await products.add_service(
                pool, Account(account_id, "test"), product.id, ServiceSpec(name, "tcp", 9000, True)
            )
        assert refused.value.field == "name"

    assert await products.get_product(pool, account_id, product.id) == product
    other = await _new(pool, account_id, "other")
    assert [s.name for s in other.services] == ["bulk", "ssh", "admin", "vnc"]


async def test_concurrent_add_service_takes_one_position_each(pool: Pool, account_id: str) -> None:
    product = await _new(pool, account_id)

    await asyncio.gather(
        *(
            products.add_service(
                pool, Account(account_id, "test"), product.id, ServiceSpec(f"tcp{i}", "tcp", 9000 + i, True)
            )
            for i in range(4)
        )
    )

    services = (await products.get_product(pool, account_id, product.id)).services
    assert [s.position for s in services] == list(range(8))
    assert {s.name for s in services[4:]} == {"tcp0", "tcp1", "tcp2", "tcp3"}


async def test_adding_services_stops_at_the_limit_product_creation_applies_even_concurrently(
    pool: Pool, account_id: str
) -> None:
    product = await _new(pool, account_id)  # three services and the bulk service
    free = MAX_SERVICES - 3
    results = await asyncio.gather(
        *(
            products.add_service(
                pool, Account(account_id, "test"), product.id, ServiceSpec(f"tcp{i}", "tcp", 9000 + i, True)
            )
            for i in range(free + 3)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Exception) for r in results) == 3, results
    refused = [r for r in results if isinstance(r, Conflict)]
    assert len(refused) == 3
    assert all(r.rule == f"max_items={MAX_SERVICES}" and r.field == "services" for r in refused)
    services = (await products.get_product(pool, account_id, product.id)).services
    assert len(services) == MAX_SERVICES + 1  # the bulk service is not counted


async def test_another_accounts_product_is_not_found(pool: Pool, account_id: str) -> None:
    product = await _new(pool, account_id)
    stranger = await registry.new_account(pool)

    with pytest.raises(NotFound):
        await products.get_product(pool, stranger, product.id)
    with pytest.raises(NotFound):
        await products.get_product(pool, account_id, str(uuid.uuid4()))
    with pytest.raises(NotFound):
        await products.add_service(
            pool, Account(stranger, "test"), product.id, ServiceSpec("tcp", "tcp", 9000, True)
        )
    with pytest.raises(NotFound):
        await products.lock_product(pool, Account(stranger, "test"), product.id)
    assert await products.list_products(pool, stranger) == []
    assert await products.list_products(pool, stranger, product.id) == []
    async with pool.acquire() as conn:
        assert await products.product_state(conn, stranger, product.id) is None
        assert await products.product_state(conn, account_id, product.id) == ProductState("new", None)

    assert await products.get_product(pool, account_id, product.id) == product  # untouched


async def test_lock_product_is_one_way_and_creates_both_codes(pool: Pool, account_id: str) -> None:
    product = await _new(pool, account_id)

    locked = await products.lock_product(pool, Account(account_id, "test"), product.id)

    assert locked.status == "locked"
    assert locked.product_code is not None
    assert locked.bulk_identification_code is not None
    assert CODE.fullmatch(locked.product_code)
    assert CODE.fullmatch(locked.bulk_identification_code)
    assert locked.product_code != locked.bulk_identification_code
    assert locked.services == product.services
    assert await pool.fetchval("SELECT locked_at IS NOT NULL FROM products WHERE id = $1", product.id)
    with pytest.raises(Conflict):
        await products.lock_product(pool, Account(account_id, "test"), product.id)
    assert await products.get_product(pool, account_id, product.id) == locked
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM bulk_identification_codes WHERE product_id = $1", product.id
        )
        == 1
    )
    async with pool.acquire() as conn:
        assert await products.product_state(conn, account_id, product.id) == ProductState("locked", None)


async def test_two_concurrent_locks_lock_once(pool: Pool, account_id: str) -> None:
    product = await _new(pool, account_id)

    async with pool.acquire() as holder:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM products WHERE id = $1 FOR UPDATE", product.id)
            racing = [
                asyncio.create_task(products.lock_product(pool, Account(account_id, "test"), product.id))
                for _ in range(2)
            ]
            await registry.wait_until_waiting_for(pool, holder.get_server_pid(), count=2)
        outcomes = await asyncio.gather(*racing, return_exceptions=True)

    assert sorted(type(o).__name__ for o in outcomes) == ["Conflict", "Product"]
    winner = next(o for o in outcomes if isinstance(o, Product))
    assert await products.get_product(pool, account_id, product.id) == winner
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM bulk_identification_codes WHERE product_id = $1", product.id
        )
        == 1
    )


async def test_product_state_for_update_holds_the_row_until_the_transaction_ends(
    pool: Pool, account_id: str
) -> None:
    product = await _new(pool, account_id)

    async with pool.acquire() as holder:
        async with holder.transaction():
            state = await products.product_state(holder, account_id, product.id, for_update=True)
            locking = asyncio.create_task(
                products.lock_product(pool, Account(account_id, "test"), product.id)
            )
            await registry.wait_until_waiting_for(pool, holder.get_server_pid())
            assert not locking.done()
        locked = await asyncio.wait_for(locking, 10)

    assert state == ProductState("new", None)
    assert locked.status == "locked"


async def test_resolve_codes_tells_what_each_code_opens(pool: Pool, account_id: str) -> None:
    auto = await registry.new_product(pool, account_id, kind="auto")
    auto_registration = await registry.new_registration(pool, auto)
    old, current = (
        await registry.new_code(pool, auto.id, revoked=True),
        await registry.new_code(pool, auto.id),
    )
    paused = await registry.new_product(pool, account_id, kind="auto")
    paused_registration = await registry.new_registration(pool, paused, status="paused")
    paused_code = await registry.new_code(pool, paused.id)
    bulk = await registry.new_product(pool, account_id, kind="bulk")
    await registry.new_registration(
        pool, bulk, kind="bulk", status="configured"
    )  # not published: admits none
    published = await registry.new_registration(pool, bulk, kind="bulk", status="preregistered")
    bulk_code = await registry.new_code(pool, bulk.id)
    unused = await registry.new_product(pool, account_id)
    unused_code = await registry.new_code(pool, unused.id)
    unknown = str(uuid.uuid4()).upper()

    found = await products.resolve_codes(
        pool, [old, current, current, paused_code, bulk_code, unused_code, unknown, current.lower()]
    )

    def admission(
        code: str,
        product: registry.Product,
        registration: str | None,
        kind: str | None,
        status: str | None,
        *,
        revoked: bool = False,
    ) -> CodeAdmission:
        return CodeAdmission(code, revoked, account_id, product.id, registration, kind, status)

    assert found == {
        old: admission(old, auto, auto_registration, "auto", "active", revoked=True),
        current: admission(current, auto, auto_registration, "auto", "active"),
        paused_code: admission(paused_code, paused, paused_registration, "auto", "paused"),
        bulk_code: admission(bulk_code, bulk, published, "bulk", "preregistered"),
        unused_code: admission(unused_code, unused, None, None, None),
    }
    assert await products.resolve_codes(pool, []) == {}


async def test_replace_code_takes_effect_when_the_callers_transaction_commits(
    pool: Pool, account_id: str
) -> None:
    product = await registry.new_product(pool, account_id, kind="auto")
    await registry.new_registration(pool, product)
    old = await registry.new_code(pool, product.id)

    async with pool.acquire() as conn:
        async with conn.transaction():
            await products.replace_code(conn, product.id)
            assert not (await products.resolve_codes(pool, [old]))[old].revoked  # not yet
        codes = await pool.fetch(
            "SELECT code, revoked_at IS NOT NULL AS revoked FROM bulk_identification_codes WHERE product_id = $1",
            product.id,
        )

    by_code = {r["code"]: r["revoked"] for r in codes}
    assert by_code.pop(old) is True
    ((new, revoked),) = by_code.items()
    assert not revoked
    found = await products.resolve_codes(pool, [old, new])
    assert (found[old].revoked, found[new].revoked) == (True, False)
    assert found[new].product_id == product.id


async def test_replace_code_rolled_back_changes_nothing(pool: Pool, account_id: str) -> None:
    product = await registry.new_product(pool, account_id, kind="auto")
    old = await registry.new_code(pool, product.id)

    class RolledBack(Exception):
        pass

    with pytest.raises(RolledBack):
        async with pool.acquire() as conn, conn.transaction():
            await products.replace_code(conn, product.id)
            raise RolledBack

    assert [
        r["code"]
        for r in await pool.fetch(
            "SELECT code FROM bulk_identification_codes WHERE product_id = $1 AND revoked_at IS NULL",
            product.id,
        )
    ] == [old]


async def test_known_code_is_true_for_current_and_revoked_codes_only(pool: Pool, account_id: str) -> None:
    product = await registry.new_product(pool, account_id, kind="auto")
    revoked = await registry.new_code(pool, product.id, revoked=True)
    current = await registry.new_code(pool, product.id)
    assert await products.known_code(pool, current)
    assert await products.known_code(pool, revoked)
    assert not await products.known_code(pool, str(uuid.uuid4()).upper())
    assert not await products.known_code(pool, current.lower())  # callers pass the canonical form
    # When a code was revoked: a rotated code is stale (not a guess) for a while (issue 22).
    assert await products.code_revoked_at(pool, revoked) is not None
    assert await products.code_revoked_at(pool, current) is None
    assert await products.code_revoked_at(pool, str(uuid.uuid4()).upper()) is None


async def test_creating_rotating_and_deleting_a_code_tells_every_intake(
    pool: Pool, database_url: str, account_id: str
) -> None:
    """Lock, rotation and deletion send ``codes`` on fleetreg_invalidate when they commit:
    each intake then drops its cache of known and unknown codes (code_cache.py)."""
    import asyncpg

    from shared.db.throttle import INVALIDATION_CHANNEL

    received: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(database_url)
    await listener.add_listener(INVALIDATION_CHANNEL, lambda *args: received.put_nowait(str(args[-1])))

    async def codes_signal() -> bool:
        """A ``codes`` payload arrives (others' payloads on the shared database are skipped)."""
        try:
            while await asyncio.wait_for(received.get(), timeout=2) != products.CODES_CHANGED:
                pass
        except TimeoutError:
            return False
        return True

    try:
        actor = Account(account_id, "test")
        product = await _new(pool, account_id)
        await products.lock_product(pool, actor, product.id)
        assert await codes_signal()
        async with pool.acquire() as conn, conn.transaction():
            await products.replace_code(conn, product.id)
        assert await codes_signal()
        await products.delete_product(pool, actor, product.id)
        assert await codes_signal()
    finally:
        await listener.close()
