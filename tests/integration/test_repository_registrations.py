"""shared.db.registrations on the real Postgres: the rules a registration is created under
(a locked product, one kind per product, one auto registration, also when two instances
create one at once), the operator's listing and settings, code rotation, and the quota rows
deduplication locks."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import asyncpg
import pytest

from shared.db import audit, products, registrations
from shared.db.pool import Connection, Pool
from shared.domain.accounts import Account
from shared.errors import Conflict, DomainError, NotFound
from tests.support import registry

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Locked:
    """A locked product serving no registration yet, with its current code."""

    account_id: str
    product: registry.Product
    code: str


@pytest.fixture
async def locked(pool: Pool) -> Locked:
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id)
    return Locked(account_id, product, await registry.new_code(pool, product.id))


def _actor(account_id: str) -> Account:
    """The account as an operator call names it (no key: the audit trail records NULL)."""
    return Account(account_id, "test")


async def _kind(pool: Pool, product_id: str) -> str | None:
    kind: str | None = await pool.fetchval("SELECT registration_kind FROM products WHERE id = $1", product_id)
    return kind


async def _count(pool: Pool, product_id: str) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM registrations WHERE product_id = $1", product_id)
    return count


async def test_create_registration_claims_the_product_for_its_kind(pool: Pool, locked: Locked) -> None:
    registration_id = await registrations.create_registration(
        pool, _actor(locked.account_id), locked.product.id, "auto", "active", max_devices=5
    )

    found = await registrations.get_registration(pool, locked.account_id, "auto", registration_id)
    assert (found.id, found.product_id, found.kind, found.status) == (
        registration_id,
        locked.product.id,
        "auto",
        "active",
    )
    assert (found.bulk_identification_code, found.max_devices, found.device_count) == (locked.code, 5, 0)
    assert found.created_at == found.updated_at
    assert await _kind(pool, locked.product.id) == "auto"


async def test_a_product_must_be_locked_first(pool: Pool) -> None:
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id, locked=False)

    with pytest.raises(Conflict) as refused:
        await registrations.create_registration(pool, _actor(account_id), product.id, "auto", "active")

    assert refused.value.rule == "product_locked"
    assert (await _kind(pool, product.id), await _count(pool, product.id)) == (None, 0)


async def test_a_product_serves_one_registration_kind(pool: Pool) -> None:
    account_id = await registry.new_account(pool)
    bulk = await registry.new_product(pool, account_id, kind="bulk")
    await registry.new_registration(pool, bulk, kind="bulk", status="configured")
    auto = await registry.new_product(pool, account_id)
    await registrations.create_registration(pool, _actor(account_id), auto.id, "auto", "active")

    with pytest.raises(Conflict) as auto_on_bulk:
        await registrations.create_registration(pool, _actor(account_id), bulk.id, "auto", "active")
    with pytest.raises(Conflict) as bulk_on_auto:
        await registrations.create_registration(pool, _actor(account_id), auto.id, "bulk", "configured")

    assert (auto_on_bulk.value.rule, bulk_on_auto.value.rule) == (
        "one_registration_kind",
        "one_registration_kind",
    )
    assert (await _kind(pool, bulk.id), await _kind(pool, auto.id)) == ("bulk", "auto")
    assert (await _count(pool, bulk.id), await _count(pool, auto.id)) == (1, 1)
    # Bulk registrations: as many as wanted.
    await registrations.create_registration(pool, _actor(account_id), bulk.id, "bulk", "configured")
    assert await _count(pool, bulk.id) == 2


async def test_one_auto_registration_per_product(pool: Pool, locked: Locked) -> None:
    first = await registrations.create_registration(
        pool, _actor(locked.account_id), locked.product.id, "auto", "active"
    )

    with pytest.raises(Conflict) as refused:
        await registrations.create_registration(
            pool, _actor(locked.account_id), locked.product.id, "auto", "paused"
        )

    assert refused.value.rule == "one_auto_registration"
    assert [r.id for r in await registrations.list_registrations(pool, locked.account_id, "auto")] == [first]


async def test_two_concurrent_auto_registrations_of_one_product_one_wins(pool: Pool, locked: Locked) -> None:
    async with pool.acquire() as holder:
        async with holder.transaction():
            # Both creates start while the product is busy: they read its state one after the other.
            await holder.execute("SELECT 1 FROM products WHERE id = $1 FOR UPDATE", locked.product.id)
            racing = [
                asyncio.create_task(
                    registrations.create_registration(
                        pool, _actor(locked.account_id), locked.product.id, "auto", "active"
                    )
                )
                for _ in range(2)
            ]
            await registry.wait_until_waiting_for(pool, holder.get_server_pid(), count=2)
        outcomes = await asyncio.gather(*racing, return_exceptions=True)

    winners = [o for o in outcomes if isinstance(o, str)]
    losers = [o for o in outcomes if isinstance(o, Conflict)]
    assert (len(winners), len(losers)) == (1, 1), outcomes
    assert losers[0].rule == "one_auto_registration"
    assert [r.id for r in await registrations.list_registrations(pool, locked.account_id, "auto")] == winners


async def test_another_accounts_product_takes_no_registration(pool: Pool, locked: Locked) -> None:
    stranger = await registry.new_account(pool)

    for product_id in (locked.product.id, str(uuid.uuid4())):
        with pytest.raises(NotFound):
            await registrations.create_registration(pool, _actor(stranger), product_id, "auto", "active")

    assert (await _kind(pool, locked.product.id), await _count(pool, locked.product.id)) == (None, 0)


async def test_list_and_get_count_devices_and_stay_in_the_account(pool: Pool, locked: Locked) -> None:
    first = await registrations.create_registration(
        pool, _actor(locked.account_id), locked.product.id, "auto", "active"
    )
    other_product = await registry.new_product(pool, locked.account_id)
    second = await registrations.create_registration(
        pool, _actor(locked.account_id), other_product.id, "auto", "paused", max_devices=2
    )
    for i in range(3):
        await registry.new_device(pool, locked.product, first, f"count-{i}")
    bulk = await registry.new_product(pool, locked.account_id, kind="bulk")
    bulk_registration = await registry.new_registration(pool, bulk, kind="bulk", status="configured")
    stranger = await registry.new_account(pool)
    strangers = await registry.new_product(pool, stranger)
    await registrations.create_registration(pool, _actor(stranger), strangers.id, "auto", "active")

    listed = await registrations.list_registrations(pool, locked.account_id, "auto")

    assert [(r.id, r.device_count, r.max_devices, r.status) for r in listed] == [
        (first, 3, None, "active"),
        (second, 0, 2, "paused"),
    ]
    assert listed[0].bulk_identification_code == locked.code
    assert listed[1].bulk_identification_code is None  # its product has no current code
    assert await registrations.get_registration(pool, locked.account_id, "auto", first) == listed[0]
    assert [r.id for r in await registrations.list_registrations(pool, locked.account_id, "bulk")] == [
        bulk_registration
    ]
    with pytest.raises(NotFound):
        await registrations.get_registration(pool, stranger, "auto", first)
    with pytest.raises(NotFound):
        await registrations.get_registration(pool, locked.account_id, "bulk", first)
    with pytest.raises(NotFound):
        await registrations.get_registration(pool, locked.account_id, "auto", str(uuid.uuid4()))


async def test_set_registration_status_only_in_the_account_and_kind(pool: Pool, locked: Locked) -> None:
    registration_id = await registrations.create_registration(
        pool, _actor(locked.account_id), locked.product.id, "auto", "active"
    )
    stranger = await registry.new_account(pool)

    await registrations.set_registration_status(
        pool, _actor(locked.account_id), "auto", registration_id, "paused"
    )
    with pytest.raises(NotFound):
        await registrations.set_registration_status(pool, _actor(stranger), "auto", registration_id, "active")
    with pytest.raises(NotFound):
        await registrations.set_registration_status(
            pool, _actor(locked.account_id), "bulk", registration_id, "configured"
        )

    found = await registrations.get_registration(pool, locked.account_id, "auto", registration_id)
    assert found.status == "paused"
    assert found.updated_at > found.created_at
    assert (await products.resolve_codes(pool, [locked.code]))[locked.code].status == "paused"


async def test_set_max_devices_sets_and_clears_an_auto_registrations_quota(
    pool: Pool, locked: Locked
) -> None:
    registration_id = await registrations.create_registration(
        pool, _actor(locked.account_id), locked.product.id, "auto", "active"
    )
    bulk = await registry.new_product(pool, locked.account_id, kind="bulk")
    bulk_registration = await registry.new_registration(pool, bulk, kind="bulk", status="configured")
    stranger = await registry.new_account(pool)

    async def quota() -> int | None:
        return (
            await registrations.get_registration(pool, locked.account_id, "auto", registration_id)
        ).max_devices

    await registrations.set_max_devices(pool, _actor(locked.account_id), registration_id, 10)
    assert await quota() == 10
    with pytest.raises(NotFound):
        await registrations.set_max_devices(pool, _actor(stranger), registration_id, 1)
    with pytest.raises(NotFound):
        await registrations.set_max_devices(pool, _actor(locked.account_id), bulk_registration, 1)
    assert await quota() == 10
    await registrations.set_max_devices(pool, _actor(locked.account_id), registration_id, None)
    assert await quota() is None


async def test_rotate_code_revokes_the_old_code_at_once(pool: Pool, locked: Locked) -> None:
    registration_id = await registrations.create_registration(
        pool, _actor(locked.account_id), locked.product.id, "auto", "active"
    )
    assert not (await products.resolve_codes(pool, [locked.code]))[locked.code].revoked

    await registrations.rotate_code(pool, _actor(locked.account_id), registration_id)

    new = (
        await registrations.get_registration(pool, locked.account_id, "auto", registration_id)
    ).bulk_identification_code
    assert new is not None
    assert new != locked.code
    found = await products.resolve_codes(pool, [locked.code, new])
    assert found[locked.code].revoked
    assert not found[new].revoked
    assert (found[new].registration_id, found[new].kind, found[new].status) == (
        registration_id,
        "auto",
        "active",
    )


async def test_rotate_code_of_another_account_or_a_bulk_registration_is_not_found(
    pool: Pool, locked: Locked
) -> None:
    registration_id = await registrations.create_registration(
        pool, _actor(locked.account_id), locked.product.id, "auto", "active"
    )
    bulk = await registry.new_product(pool, locked.account_id, kind="bulk")
    bulk_code = await registry.new_code(pool, bulk.id)
    bulk_registration = await registry.new_registration(pool, bulk, kind="bulk", status="preregistered")
    stranger = await registry.new_account(pool)

    with pytest.raises(NotFound):
        await registrations.rotate_code(pool, _actor(stranger), registration_id)
    with pytest.raises(NotFound):
        await registrations.rotate_code(pool, _actor(locked.account_id), bulk_registration)

    found = await products.resolve_codes(pool, [locked.code, bulk_code])
    assert not (found[locked.code].revoked or found[bulk_code].revoked)


async def test_two_concurrent_rotations_leave_one_current_code(pool: Pool, locked: Locked) -> None:
    registration_id = await registrations.create_registration(
        pool, _actor(locked.account_id), locked.product.id, "auto", "active"
    )

    async with pool.acquire() as holder:
        async with holder.transaction():
            await holder.execute(
                "SELECT 1 FROM bulk_identification_codes WHERE code = $1 FOR UPDATE", locked.code
            )
            racing = [
                asyncio.create_task(
                    registrations.rotate_code(pool, _actor(locked.account_id), registration_id)
                )
                for _ in range(2)
            ]
            await registry.wait_until_waiting_for(pool, holder.get_server_pid(), count=2)
        outcomes = await asyncio.gather(*racing, return_exceptions=True)

    # Each rotation either happened or was refused with a domain error; never a driver error.
    assert all(o is None or isinstance(o, DomainError) for o in outcomes), outcomes
    current = await pool.fetch(
        "SELECT code FROM bulk_identification_codes WHERE product_id = $1 AND revoked_at IS NULL",
        locked.product.id,
    )
    assert len(current) == 1
    assert current[0]["code"] != locked.code


async def test_lock_quotas_returns_only_registrations_with_a_quota(pool: Pool, locked: Locked) -> None:
    limited = await registrations.create_registration(
        pool, _actor(locked.account_id), locked.product.id, "auto", "active", max_devices=5
    )
    other = await registry.new_product(pool, locked.account_id)
    unlimited = await registrations.create_registration(
        pool, _actor(locked.account_id), other.id, "auto", "active"
    )
    third = await registry.new_product(pool, locked.account_id)
    paused = await registrations.create_registration(
        pool, _actor(locked.account_id), third.id, "auto", "paused", max_devices=2
    )

    async with pool.acquire() as conn, conn.transaction():
        quotas = await registrations.lock_quotas(
            conn, [limited, unlimited, paused, limited, str(uuid.uuid4())]
        )
        assert await registrations.lock_quotas(conn, []) == {}

    assert quotas == {limited: 5, paused: 2}


async def test_lock_quotas_holds_the_rows_until_the_transaction_ends(pool: Pool, locked: Locked) -> None:
    limited = await registrations.create_registration(
        pool, _actor(locked.account_id), locked.product.id, "auto", "active", max_devices=5
    )
    other = await registry.new_product(pool, locked.account_id)
    unlimited = await registrations.create_registration(
        pool, _actor(locked.account_id), other.id, "auto", "active"
    )

    async with pool.acquire() as first, pool.acquire() as second, pool.acquire() as third:
        async with first.transaction():
            assert await registrations.lock_quotas(first, [limited, unlimited]) == {limited: 5}

            async def lock(conn: Connection, ids: list[str]) -> dict[str, int]:
                async with conn.transaction():
                    return await registrations.lock_quotas(conn, ids)

            # A registration without a quota is not locked: nobody waits for it.
            assert await asyncio.wait_for(lock(third, [unlimited]), 5) == {}
            waiting = asyncio.create_task(lock(second, [limited]))
            await registry.wait_until_blocked(pool, second.get_server_pid(), waiting)
            assert not waiting.done(), "the second transaction never waited for the first"
            await asyncio.sleep(0.05)
            assert not waiting.done()
        assert await asyncio.wait_for(waiting, 10) == {limited: 5}


async def test_every_auto_registration_change_is_audited_once_with_its_key_and_never_a_code(
    pool: Pool, locked: Locked
) -> None:
    key_id = str(uuid.uuid4())
    actor = Account(locked.account_id, "test", key_id=key_id, key_label="ops laptop")
    registration_id = await registrations.create_registration(
        pool, actor, locked.product.id, "auto", "active"
    )
    await registrations.set_max_devices(pool, actor, registration_id, 10)
    await registrations.set_registration_status(pool, actor, "auto", registration_id, "paused")
    await registrations.set_registration_status(pool, actor, "auto", registration_id, "active")
    await registrations.rotate_code(pool, actor, registration_id)
    with pytest.raises(NotFound):  # a refused change leaves no event
        await registrations.rotate_code(pool, _actor(await registry.new_account(pool)), registration_id)
    new_code = await pool.fetchval(
        "SELECT code FROM bulk_identification_codes WHERE product_id = $1 AND revoked_at IS NULL",
        locked.product.id,
    )

    trail = await audit.list_events(
        pool, locked.account_id, audit.AuditFilter(target_id=registration_id), limit=10
    )

    assert [(e.action, e.api_key_id, e.api_key_label) for e in reversed(trail)] == [
        ("auto_registration.created", key_id, "ops laptop"),
        ("auto_registration.quota_changed", key_id, "ops laptop"),
        ("auto_registration.paused", key_id, "ops laptop"),
        ("auto_registration.resumed", key_id, "ops laptop"),
        ("auto_registration.code_rotated", key_id, "ops laptop"),
    ]
    assert trail[3].changes == {"max_devices": {"from": None, "to": 10}}
    assert trail[2].changes == {"status": {"from": "active", "to": "paused"}}
    assert locked.code not in str(trail) and new_code not in str(trail)


async def test_a_hook_is_created_changed_and_removed_audited_with_its_host_only(
    pool: Pool, locked: Locked
) -> None:
    actor = _actor(locked.account_id)
    registration_id = str(uuid.uuid4())
    sealed = b"\x01" * 40
    url = "https://hooks.example.com/approve?token=receiver-token"
    await registrations.create_registration(
        pool,
        actor,
        locked.product.id,
        "auto",
        "active",
        registration_id=registration_id,
        hook=registrations.Hook(url, 700, "open", sealed),
    )
    found = await registrations.get_registration(pool, locked.account_id, "auto", registration_id)
    assert (found.hook_url, found.hook_timeout_ms, found.hook_failure) == (url, 700, "open")
    assert await registrations.hook_of(pool, registration_id) == registrations.Hook(url, 700, "open", sealed)

    # The timeout alone: the URL and the secret are kept.
    await registrations.set_hook(pool, actor, "auto", registration_id, url_changes=False, timeout_ms=50)
    assert await registrations.hook_of(pool, registration_id) == registrations.Hook(url, 50, "open", sealed)
    other = b"\x02" * 40
    await registrations.set_hook(
        pool,
        actor,
        "auto",
        registration_id,
        url_changes=True,
        url="http://h2.example.com/",
        secret_sealed=other,
    )
    assert await registrations.hook_of(pool, registration_id) == registrations.Hook(
        "http://h2.example.com/", 50, "open", other
    )
    await registrations.set_hook(pool, actor, "auto", registration_id, url_changes=True, failure="closed")
    assert await registrations.hook_of(pool, registration_id) is None
    found = await registrations.get_registration(pool, locked.account_id, "auto", registration_id)
    assert (found.hook_url, found.hook_failure) == (None, "closed")
    with pytest.raises(ValueError, match="together"):  # a URL without its secret is a bug of the caller
        await registrations.set_hook(pool, actor, "auto", registration_id, url_changes=True, url="http://x/")
    with pytest.raises(NotFound):
        await registrations.set_hook(
            pool,
            _actor(await registry.new_account(pool)),
            "auto",
            registration_id,
            url_changes=False,
            timeout_ms=60,
        )

    trail = await audit.list_events(
        pool, locked.account_id, audit.AuditFilter(target_id=registration_id), limit=10
    )
    assert [e.action for e in reversed(trail)] == [
        "auto_registration.created",
        "auto_registration.hook_changed",
        "auto_registration.hook_changed",
        "auto_registration.hook_changed",
    ]
    assert trail[3].changes["hook_host"] == "hooks.example.com"
    assert trail[3].changes["hook_secret"] == "issued"
    assert trail[2].changes == {
        "hook_host": {"from": "hooks.example.com", "to": "hooks.example.com"},
        "hook_timeout_ms": {"from": 700, "to": 50},
        "hook_failure": {"from": "open", "to": "open"},
    }
    assert trail[1].changes["hook_secret"] == "issued"
    assert trail[0].changes["hook_host"] == {"from": "h2.example.com", "to": None}
    assert "receiver-token" not in str(trail)


async def test_a_hook_url_without_its_secret_is_refused_by_the_schema(pool: Pool, locked: Locked) -> None:
    registration_id = await registrations.create_registration(
        pool, _actor(locked.account_id), locked.product.id, "auto", "active"
    )
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE registrations SET hook_url = 'http://x/' WHERE id = $1", registration_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE registrations SET hook_timeout_ms = 10001 WHERE id = $1", registration_id)
