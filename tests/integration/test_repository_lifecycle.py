"""Undo, edit, cancel and delete (issue 13) on the real Postgres: a product's services
enabled, disabled and re-ported after locking (and each device's files completed when it
next asks, never fleet-wide), devices enabled again and deleted, unused products deleted,
configured bulk uploads cancelled; each change recorded once in the operator audit trail,
in its own transaction."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from shared.db import audit, bulk, devices, files, products, registrations
from shared.db.audit import AuditEvent, AuditFilter
from shared.db.pool import Pool
from shared.db.throttle import INVALIDATION_CHANNEL
from shared.domain.accounts import Account
from shared.domain.credentials import Keyring
from shared.domain.products import ServiceChange, ServiceSpec
from shared.errors import Conflict, NotFound
from tests.support import registry

pytestmark = pytest.mark.integration

KEYRING = Keyring(b"lifecycle-test-secret")
SPECS = (ServiceSpec("ssh", "ssh", 22, enabled=True),)


@pytest.fixture
async def actor(pool: Pool) -> Account:
    """The account, as a request's API key names it (the audit trail records the key)."""
    account_id = await registry.new_account(pool)
    return Account(account_id, "lifecycle", key_id=str(uuid.uuid4()), key_label="ops laptop")


async def _events(pool: Pool, actor: Account, target_id: str | None = None) -> list[AuditEvent]:
    return await audit.list_events(pool, actor.id, AuditFilter(target_id=target_id), limit=100)


async def _locked(pool: Pool, actor: Account, name: str = "gateway") -> products.Product:
    created = await products.create_product(pool, actor, name, SPECS)
    return await products.lock_product(pool, actor, created.id)


async def _provisioned_device(pool: Pool, actor: Account, product: products.Product, hardware_id: str) -> str:
    """A device of the product whose files provisioning rendered (as it does at registration)."""
    registration_id = await pool.fetchval(
        "SELECT id::text FROM registrations WHERE product_id = $1", product.id
    ) or await registrations.create_registration(pool, actor, product.id, "auto", "active")
    device_id = await pool.fetchval(
        """INSERT INTO devices (id, account_id, product_id, registration_id, hardware_id, claimed_hardware_id,
                                name, lifecycle)
           VALUES (gen_random_uuid(), $1, $2, $3, $4, $4, $4, 'provisioned') RETURNING id::text""",
        actor.id,
        product.id,
        registration_id,
        hardware_id,
    )
    async with pool.acquire() as conn, conn.transaction():
        found = await files.device_files(conn, [device_id])
        stale = [(d, s) for d in found.values() for s in d.stale()]
        uids = await files.next_service_uids(conn, len(stale))
        await files.record_files(conn, files.render_stale(KEYRING, stale, uids))
    return str(device_id)


def _service(product: products.Product, name: str) -> products.ProductService:
    return next(s for s in product.services if s.name == name)


async def _device_files(pool: Pool, device_id: str) -> files.DeviceFiles:
    found = await files.one_device_files(pool, device_id)
    assert found is not None
    return found


# ---------------------------------------------------------------- product services


async def test_a_service_added_after_locking_can_be_enabled_and_is_audited_once(
    pool: Pool, actor: Account
) -> None:
    product = await _locked(pool, actor)
    added = await products.add_service(pool, actor, product.id, ServiceSpec("web", "web", 80, True))
    web = _service(added, "web")
    assert not web.enabled  # added after locking: disabled [ref]

    changed = await products.change_service(
        pool, actor, product.id, web.id.upper(), ServiceChange(enabled=True)
    )

    assert _service(changed, "web").enabled
    trail = await _events(pool, actor, product.id)
    assert [e.action for e in reversed(trail)] == [
        "product.created",
        "product.locked",
        "product.service_added",
        "product.service_changed",
    ]
    assert all(e.api_key_id == actor.key_id and e.api_key_label == "ops laptop" for e in trail)
    assert trail[0].changes == {
        "service": "web",
        "provisioning_id": web.id.upper(),
        "enabled": {"from": False, "to": True},
    }
    # The code is named, never copied into the trail.
    assert product.bulk_identification_code is not None
    assert all(product.bulk_identification_code not in str(e.changes) for e in trail)


async def test_an_edit_that_changes_nothing_records_nothing(pool: Pool, actor: Account) -> None:
    product = await _locked(pool, actor)
    ssh = _service(product, "ssh")
    before = await pool.fetchrow("SELECT revision, changed_at FROM product_services WHERE id = $1", ssh.id)

    same = await products.change_service(
        pool, actor, product.id, ssh.id, ServiceChange(enabled=True, port=22)
    )

    assert same == product
    assert [e.action for e in await _events(pool, actor, product.id)] == ["product.locked", "product.created"]
    assert (
        await pool.fetchrow("SELECT revision, changed_at FROM product_services WHERE id = $1", ssh.id)
        == before
    )


async def test_a_port_change_moves_the_revision_and_the_timestamp_forward(pool: Pool, actor: Account) -> None:
    product = await _locked(pool, actor)
    ssh = _service(product, "ssh")

    await products.change_service(pool, actor, product.id, ssh.id, ServiceChange(enabled=False))
    first = await pool.fetchrow("SELECT revision, changed_at FROM product_services WHERE id = $1", ssh.id)
    await products.change_service(pool, actor, product.id, ssh.id, ServiceChange(port=2222))
    second = await pool.fetchrow("SELECT revision, changed_at FROM product_services WHERE id = $1", ssh.id)

    assert first["revision"] == 1  # enabling or disabling alters no file
    assert second["revision"] == 2  # the port is written in the file
    # A client comparing whole seconds sees every change.
    assert int(second["changed_at"].timestamp()) > int(first["changed_at"].timestamp())


async def test_what_a_service_edit_may_not_change(pool: Pool, actor: Account) -> None:
    product = await _locked(pool, actor)
    bulk_service, ssh = product.services

    with pytest.raises(Conflict, match="bulk service") as refused:
        await products.change_service(pool, actor, product.id, bulk_service.id, ServiceChange(enabled=False))
    assert refused.value.rule == "bulk_service_fixed"
    with pytest.raises(Conflict) as renamed:
        await products.change_service(pool, actor, product.id, ssh.id, ServiceChange(name="shell"))
    assert renamed.value.rule == "product_locked"
    with pytest.raises(NotFound):
        await products.change_service(
            pool, actor, product.id, str(uuid.uuid4()), ServiceChange(enabled=False)
        )
    with pytest.raises(NotFound):
        await products.change_service(pool, actor, product.id, "not-an-id\0", ServiceChange(enabled=False))
    stranger = Account(await registry.new_account(pool), "stranger", key_id=str(uuid.uuid4()))
    with pytest.raises(NotFound):
        await products.change_service(pool, stranger, product.id, ssh.id, ServiceChange(enabled=False))
    assert await products.get_product(pool, actor.id, product.id) == product


async def test_a_new_products_service_can_be_renamed_but_not_onto_another(pool: Pool, actor: Account) -> None:
    product = await products.create_product(
        pool, actor, "cam", (*SPECS, ServiceSpec("web", "web", 80, enabled=True))
    )
    ssh = _service(product, "ssh")

    renamed = await products.change_service(pool, actor, product.id, ssh.id, ServiceChange(name="shell"))
    assert [s.name for s in renamed.services] == ["bulk", "shell", "web"]
    with pytest.raises(Conflict, match="web"):
        await products.change_service(pool, actor, product.id, ssh.id, ServiceChange(name="web"))


async def test_a_service_edit_is_announced_to_the_intakes(pool: Pool, actor: Account, migrated: str) -> None:
    product = await _locked(pool, actor)
    received: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(migrated)
    try:
        await conn.add_listener(
            INVALIDATION_CHANNEL, lambda _c, _p, _ch, payload: received.put_nowait(payload)
        )
        await products.change_service(
            pool, actor, product.id, _service(product, "ssh").id, ServiceChange(port=2022)
        )
        while await asyncio.wait_for(received.get(), 10) != f"product:{product.id}":
            pass  # other tests share the channel
    finally:
        await conn.close()


# ---------------------------------------------------------------- files completed on demand


async def test_a_service_enabled_later_gets_its_file_and_uid_when_the_device_asks(
    pool: Pool, actor: Account
) -> None:
    product = await _locked(pool, actor)
    web = _service(
        await products.add_service(pool, actor, product.id, ServiceSpec("web", "web", 80, True)), "web"
    )
    device_id = await _provisioned_device(pool, actor, product, f"later-{uuid.uuid4().hex[:8]}")
    before = await _device_files(pool, device_id)
    assert [s.service.name for s in before.current()] == ["bulk", "ssh"]

    await products.change_service(pool, actor, product.id, web.id, ServiceChange(enabled=True))
    asked = await _device_files(pool, device_id)
    assert [s.service.name for s in asked.stale()] == ["web"]  # nothing was written for the fleet
    completed = await files.complete_device_files(pool, KEYRING, asked)

    assert [s.service.name for s in completed.current()] == ["bulk", "ssh", "web"]
    assert not completed.stale()
    uid = _uid(completed, "web")
    # Asked again (another call, another instance at once): the same file and UID.
    again = await asyncio.gather(*(files.complete_device_files(pool, KEYRING, asked) for _ in range(4)))
    assert {_uid(d, "web") for d in again} == {uid}
    assert await pool.fetchval("SELECT count(*) FROM provisioning_files WHERE device_id = $1", device_id) == 3


async def test_concurrent_first_asks_agree_on_one_uid(pool: Pool, actor: Account) -> None:
    product = await _locked(pool, actor)
    web = _service(
        await products.add_service(pool, actor, product.id, ServiceSpec("web", "web", 80, True)), "web"
    )
    device_id = await _provisioned_device(pool, actor, product, f"race-{uuid.uuid4().hex[:8]}")
    await products.change_service(pool, actor, product.id, web.id, ServiceChange(enabled=True))
    asked = await _device_files(pool, device_id)

    answers = await asyncio.gather(*(files.complete_device_files(pool, KEYRING, asked) for _ in range(8)))

    recorded = await pool.fetchval(
        "SELECT service_uid FROM provisioning_files WHERE device_id = $1 AND product_service_id = $2",
        device_id,
        web.id,
    )
    assert {_uid(a, "web") for a in answers} == {recorded}


async def test_disabling_drops_the_file_from_the_current_ones_and_keeps_the_uid(
    pool: Pool, actor: Account
) -> None:
    product = await _locked(pool, actor)
    ssh = _service(product, "ssh")
    device_id = await _provisioned_device(pool, actor, product, f"off-{uuid.uuid4().hex[:8]}")
    uid = _uid(await _device_files(pool, device_id), "ssh")

    await products.change_service(pool, actor, product.id, ssh.id, ServiceChange(enabled=False))
    off = await _device_files(pool, device_id)
    assert [s.service.name for s in off.current()] == ["bulk"]
    assert not off.stale()

    await products.change_service(pool, actor, product.id, ssh.id, ServiceChange(enabled=True, port=2222))
    back = await files.complete_device_files(pool, KEYRING, await _device_files(pool, device_id))
    assert _uid(back, "ssh") == uid
    (ssh_file,) = [s for s in back.current() if s.service.name == "ssh"]
    assert ssh_file.service.port == 2222
    assert ssh_file.recorded is not None and ssh_file.recorded.service_revision == 2


async def test_a_port_change_renders_the_file_again_with_the_same_uid(pool: Pool, actor: Account) -> None:
    product = await _locked(pool, actor)
    ssh = _service(product, "ssh")
    device_id = await _provisioned_device(pool, actor, product, f"port-{uuid.uuid4().hex[:8]}")
    before = next(s for s in (await _device_files(pool, device_id)).current() if s.service.name == "ssh")

    await products.change_service(pool, actor, product.id, ssh.id, ServiceChange(port=2222))
    stale = await _device_files(pool, device_id)
    assert [s.service.name for s in stale.current()] == ["bulk"]  # the old file is not served
    after = next(
        s
        for s in (await files.complete_device_files(pool, KEYRING, stale)).current()
        if s.service.name == "ssh"
    )

    assert after.service_uid == before.service_uid
    assert after.recorded is not None and before.recorded is not None
    assert after.recorded.sha256 != before.recorded.sha256


async def test_a_device_never_provisioned_is_left_to_provisioning(pool: Pool, actor: Account) -> None:
    product = await _locked(pool, actor)
    registration_id = await registrations.create_registration(pool, actor, product.id, "auto", "active")
    device_id = await pool.fetchval(
        """INSERT INTO devices (id, account_id, product_id, registration_id, hardware_id, claimed_hardware_id,
                                name, lifecycle)
           VALUES (gen_random_uuid(), $1, $2, $3, 'fresh', 'fresh', 'fresh', 'registered') RETURNING id::text""",
        actor.id,
        product.id,
        registration_id,
    )
    found = await _device_files(pool, device_id)

    assert await files.complete_device_files(pool, KEYRING, found) == found
    assert await pool.fetchval("SELECT count(*) FROM provisioning_files WHERE device_id = $1", device_id) == 0


def _uid(found: files.DeviceFiles, name: str) -> str | None:
    return next(s.service_uid for s in found.services if s.service.name == name)


# ---------------------------------------------------------------- devices


async def test_enable_undoes_disable_and_each_change_is_audited_once(pool: Pool, actor: Account) -> None:
    product = await _locked(pool, actor)
    device_id = await _provisioned_device(pool, actor, product, "E1")

    await devices.change_device(pool, actor, device_id, "disable")
    (again,) = await devices.change_devices(pool, actor, [device_id], "disable")
    (enabled,) = await devices.change_devices(pool, actor, [device_id.upper()], "enable")
    (nothing,) = await devices.change_devices(pool, actor, [device_id], "enable")

    assert (again.outcome, enabled.outcome, nothing.outcome) == ("unchanged", "enabled", "unchanged")
    assert not (await devices.get_device(pool, actor.id, device_id)).disabled
    trail = await _events(pool, actor, device_id)
    assert [(e.action, e.changes) for e in reversed(trail)] == [
        ("device.disabled", {"hardware_id": "E1", "disabled": {"from": False, "to": True}}),
        ("device.enabled", {"hardware_id": "E1", "disabled": {"from": True, "to": False}}),
    ]
    history = [e.kind for e in await devices.device_history(pool, device_id)]
    assert history[-2:] == ["disabled", "enabled"]


async def test_a_disabled_device_is_reset_once_enabled(pool: Pool, actor: Account) -> None:
    product = await _locked(pool, actor)
    device_id = await _provisioned_device(pool, actor, product, "R1")
    await devices.change_device(pool, actor, device_id, "disable")

    with pytest.raises(Conflict, match="enable it first"):
        await devices.change_device(pool, actor, device_id, "reset")
    await devices.change_device(pool, actor, device_id, "enable")
    await devices.change_device(pool, actor, device_id, "reset")

    (reset,) = [e for e in await _events(pool, actor, device_id) if e.action == "device.reset"]
    assert reset.changes == {
        "hardware_id": "R1",
        "lifecycle": {"from": "provisioned", "to": "preregistered"},
        "credential_generation": {"from": 1, "to": 2},
    }


async def test_deleting_a_device_frees_its_hardware_id_and_keeps_its_record(
    pool: Pool, actor: Account
) -> None:
    product = await _locked(pool, actor)
    device_id = await _provisioned_device(pool, actor, product, "Gone-1")
    registration_id = (await devices.get_device(pool, actor.id, device_id)).registration_id
    request_id = str(uuid.uuid4())
    await pool.execute(
        """INSERT INTO registration_decisions (request_id, account_id, product_id, device_id,
               claimed_hardware_id, assigned_hardware_id, decision, status, received_at)
           VALUES ($1, $2, $3, $4, 'Gone-1', 'Gone-1', 'new', 'ready', now())""",
        request_id,
        actor.id,
        product.id,
        device_id,
    )
    stranger = Account(await registry.new_account(pool), "stranger", key_id=str(uuid.uuid4()))

    (theirs,) = await devices.change_devices(pool, stranger, [device_id], "delete")
    assert theirs.outcome == "not_found"
    (gone, unknown) = await devices.change_devices(pool, actor, [device_id, str(uuid.uuid4())], "delete")

    assert (gone.outcome, unknown.outcome) == ("deleted", "not_found")
    with pytest.raises(NotFound):
        await devices.get_device(pool, actor.id, device_id)
    assert await pool.fetchval("SELECT count(*) FROM provisioning_files WHERE device_id = $1", device_id) == 0
    # The decision stays, without its device; the audit trail names what was deleted.
    assert await pool.fetchval(
        "SELECT device_id IS NULL FROM registration_decisions WHERE request_id = $1", request_id
    )
    (deleted,) = await _events(pool, actor, device_id)
    assert deleted.action == "device.deleted"
    assert deleted.changes == {
        "hardware_id": "Gone-1",
        "name": "Gone-1",
        "lifecycle": "provisioned",
        "disabled": False,
        "product_id": product.id,
        "registration_id": registration_id,
    }
    assert await _events(pool, stranger) == []
    assert await _quota_count(pool, registration_id) == 0
    # The hardware ID, in any case, is free for a new device, without an index.
    await registry.new_device(pool, registry.Product(product.id, actor.id, ()), registration_id, "gone-1")
    assert await _quota_count(pool, registration_id) == 1


async def _quota_count(pool: Pool, registration_id: str) -> int:
    """What an auto registration's quota counts: its devices (a deleted one no longer)."""
    async with pool.acquire() as conn:
        return (await devices.count_registration_devices(conn, [registration_id]))[registration_id]


async def test_a_batch_change_records_one_event_per_device_changed(pool: Pool, actor: Account) -> None:
    product = await _locked(pool, actor)
    ids = [await _provisioned_device(pool, actor, product, f"B{i}") for i in range(3)]
    await devices.change_device(pool, actor, ids[0], "disable")

    changes = await devices.change_devices(pool, actor, ids, "disable")

    assert [c.outcome for c in changes] == ["unchanged", "disabled", "disabled"]
    disabled = [e for e in await _events(pool, actor) if e.action == "device.disabled"]
    assert sorted(e.target_id for e in disabled) == sorted([ids[0], ids[1], ids[2]])


# ---------------------------------------------------------------- products deleted


async def test_only_an_unused_product_can_be_deleted_with_its_codes(pool: Pool, actor: Account) -> None:
    used = await _locked(pool, actor, "used")
    registration_id = await registrations.create_registration(pool, actor, used.id, "auto", "active")
    unused = await _locked(pool, actor, "unused")
    code = unused.bulk_identification_code
    assert code is not None
    refused_request = str(uuid.uuid4())
    await pool.execute(  # a refused claim with the product's code names the product
        """INSERT INTO registration_decisions (request_id, account_id, product_id, claimed_hardware_id,
               decision, reason, status, received_at)
           VALUES ($1, $2, $3, 'H', 'refused', 'why', 'refused', now())""",
        refused_request,
        actor.id,
        unused.id,
    )

    with pytest.raises(Conflict, match="1 auto registration") as in_use:
        await products.delete_product(pool, actor, used.id)
    assert in_use.value.rule == "product_unused"
    await registry.new_device(pool, registry.Product(used.id, actor.id, ()), registration_id, "D1")
    with pytest.raises(Conflict, match="1 device"):
        await products.delete_product(pool, actor, used.id)
    await products.delete_product(pool, actor, unused.id)

    with pytest.raises(NotFound):
        await products.get_product(pool, actor.id, unused.id)
    with pytest.raises(NotFound):
        await products.delete_product(pool, actor, unused.id)
    assert await products.resolve_codes(pool, [code]) == {}
    assert await pool.fetchval(
        "SELECT product_id IS NULL FROM registration_decisions WHERE request_id = $1", refused_request
    )
    (deleted,) = [e for e in await _events(pool, actor, unused.id) if e.action == "product.deleted"]
    assert deleted.changes == {"name": "unused", "status": "locked", "bulk_identification_code": "deleted"}
    assert code not in str(deleted.changes)
    assert (await products.get_product(pool, actor.id, used.id)).name == "used"


async def test_a_product_used_by_a_bulk_upload_is_not_deleted(pool: Pool, actor: Account) -> None:
    product = await _locked(pool, actor)
    await bulk.start_upload(pool, actor.id, product.id, "fleet.csv")  # still being checked: uses it

    with pytest.raises(Conflict, match="1 bulk registration"):
        await products.delete_product(pool, actor, product.id)


# ---------------------------------------------------------------- bulk registrations cancelled


async def _configured(pool: Pool, actor: Account, product: products.Product, rows: int = 3) -> str:
    registration_id = await bulk.start_upload(pool, actor.id, product.id, "fleet.csv")
    await bulk.copy_rows(
        pool,
        [
            (registration_id, line, f"hw-{uuid.uuid4().hex[:8]}", uuid.uuid4().bytes * 2, f"n{line}", "", "")
            for line in range(2, 2 + rows)
        ],
    )
    await bulk.finish_upload(pool, registration_id, actor, product.id, rows, "fleet.csv")
    return registration_id


async def test_a_configured_upload_is_cancelled_with_its_rows(pool: Pool, actor: Account) -> None:
    product = await _locked(pool, actor)
    registration_id = await _configured(pool, actor, product)
    assert (await products.get_product(pool, actor.id, product.id)).registration_kind == "bulk"

    cancelled = await bulk.cancel_bulk(pool, actor, registration_id)

    assert (cancelled.id, cancelled.status, cancelled.rows) == (registration_id, "configured", 3)
    assert (
        await pool.fetchval("SELECT count(*) FROM bulk_rows WHERE registration_id = $1", registration_id) == 0
    )
    with pytest.raises(NotFound):
        await bulk.get_bulk(pool, actor.id, registration_id)
    with pytest.raises(NotFound):
        await bulk.cancel_bulk(pool, actor, registration_id)
    # Nothing uses the product any more: it may serve an auto registration, or be deleted.
    assert (await products.get_product(pool, actor.id, product.id)).registration_kind is None
    assert [(e.action, e.changes) for e in reversed(await _events(pool, actor, registration_id))] == [
        (
            "bulk.uploaded",
            {"product_id": product.id, "file_name": "fleet.csv", "rows": 3, "status": "configured"},
        ),
        (
            "bulk.cancelled",
            {
                "product_id": product.id,
                "file_name": "fleet.csv",
                "rows": 3,
                "status": {"from": "configured", "to": "cancelled"},
            },
        ),
    ]
    await products.delete_product(pool, actor, product.id)


async def test_a_publishing_upload_is_not_cancelled(pool: Pool, actor: Account) -> None:
    product = await _locked(pool, actor)
    registration_id = await _configured(pool, actor, product)
    other = await _configured(pool, actor, product)
    await bulk.start_publish(pool, actor, registration_id)

    with pytest.raises(Conflict, match="is publishing") as refused:
        await bulk.cancel_bulk(pool, actor, registration_id)
    assert refused.value.rule == "state=configured"
    stranger = Account(await registry.new_account(pool), "stranger", key_id=str(uuid.uuid4()))
    with pytest.raises(NotFound):
        await bulk.cancel_bulk(pool, stranger, other)
    await bulk.cancel_bulk(pool, actor, other)
    # Another registration still uses the product: it keeps serving bulk registrations.
    assert (await products.get_product(pool, actor.id, product.id)).registration_kind == "bulk"
    (requested,) = [
        e for e in await _events(pool, actor, registration_id) if e.action == "bulk.publish_requested"
    ]
    assert requested.changes == {"status": {"from": "configured", "to": "publishing"}}


async def test_cancel_and_publish_at_once_do_one_or_the_other(pool: Pool, actor: Account) -> None:
    product = await _locked(pool, actor)
    for _ in range(5):
        registration_id = await _configured(pool, actor, product)
        results = await asyncio.gather(
            bulk.cancel_bulk(pool, actor, registration_id),
            bulk.start_publish(pool, actor, registration_id),
            return_exceptions=True,
        )
        cancelled, published = results
        if isinstance(cancelled, BaseException):  # publishing came first
            assert isinstance(cancelled, Conflict) and published is None
            assert (await bulk.get_bulk(pool, actor.id, registration_id)).status == "publishing"
        else:  # the cancel came first: nothing is left to publish
            assert isinstance(published, NotFound)
            assert (
                await pool.fetchval("SELECT count(*) FROM registrations WHERE id = $1", registration_id) == 0
            )


async def test_an_upload_started_while_its_product_is_deleted_is_not_found(
    pool: Pool, actor: Account
) -> None:
    product = await _locked(pool, actor)
    async with pool.acquire() as deleting:
        transaction = deleting.transaction()
        await transaction.start()
        await deleting.execute("DELETE FROM products WHERE id = $1", product.id)  # delete_product, mid-way
        starting = asyncio.create_task(bulk.start_upload(pool, actor.id, product.id, "fleet.csv"))
        async with asyncio.timeout(10):  # the upload read the product, and waits on its row
            while not starting.done() and not await pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid)))",
                deleting.get_server_pid(),
            ):
                await asyncio.sleep(0.01)
        await transaction.commit()
        with pytest.raises(NotFound):
            await starting
