"""shared.db.files on the real Postgres: the one query provisioning and the intake both read
(every enabled service of the device's product, in position order, with its recorded
file), service UIDs, and recording files across credential generations."""

from __future__ import annotations

import json

import pytest

from shared.db import files
from shared.db.files import DeviceFiles, NewFile, RecordedFile
from shared.db.pool import Pool
from shared.domain.provisioning import ServiceRecipe, registration_data_file
from tests.support import registry
from tests.support.registry import Service

pytestmark = pytest.mark.integration

SERVICES = (
    Service("bulk", "rmt3", 65535),
    Service("ssh", "ssh", 22),
    Service("web", "web", 80, enabled=False),
    Service("vnc", "vnc", 5900),
)


@pytest.fixture
async def product(pool: Pool) -> registry.Product:
    account_id = await registry.new_account(pool)
    return await registry.new_product(pool, account_id, kind="auto", services=SERVICES)


async def _device(pool: Pool, product: registry.Product, hardware_id: str) -> str:
    registration_id = await pool.fetchval(
        "SELECT id::text FROM registrations WHERE product_id = $1", product.id
    ) or await registry.new_registration(pool, product)
    return await registry.new_device(pool, product, registration_id, hardware_id)


def _file(device_id: str, service_id: str, generation: int, uid: str, tag: str = "") -> NewFile:
    return NewFile(
        device_id=device_id,
        service_id=service_id.upper(),  # provisioning records the provisioning ID (upper case)
        file=RecordedFile(
            generation=generation,
            service_uid=uid,
            file_name=f"{uid}.conf",
            size=100 + generation,
            sha256=f"{tag}{generation}-{uid}".ljust(64, "0"),
        ),
    )


async def _record(pool: Pool, new: list[NewFile]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await files.record_files(conn, new)


async def _uids(pool: Pool, count: int) -> list[str]:
    async with pool.acquire() as conn:
        return [f"UID{n:09d}" for n in await files.next_service_uids(conn, count)]


async def _files_of(pool: Pool, device_id: str) -> DeviceFiles:
    return (await files.device_files(pool, [device_id]))[device_id]


def _names(services: tuple[files.ServiceFile, ...]) -> list[str]:
    return [s.service.name for s in services]


async def test_every_enabled_service_in_position_order_with_no_file_yet(
    pool: Pool, product: registry.Product
) -> None:
    device_id = await _device(pool, product, "files1")

    found = await _files_of(pool, device_id)

    bulk, ssh, _, vnc = product.service_ids
    assert found == DeviceFiles(
        device_id=device_id,
        hardware_id="files1",
        name="Device files1",
        lifecycle="registered",
        disabled=False,
        credential_generation=1,
        services=(
            files.ServiceFile(ServiceRecipe(bulk.upper(), 0, "bulk", "rmt3", 35, 65535), None, None),
            files.ServiceFile(ServiceRecipe(ssh.upper(), 1, "ssh", "ssh", 28, 22), None, None),
            files.ServiceFile(ServiceRecipe(vnc.upper(), 3, "vnc", "vnc", 4, 5900), None, None),
        ),
    )
    assert found.current() == ()
    assert _names(found.stale()) == ["bulk", "ssh", "vnc"]


async def test_current_and_stale_follow_the_credential_generation(
    pool: Pool, product: registry.Product
) -> None:
    device_id = await _device(pool, product, "files2")
    bulk, ssh, _, vnc = product.service_ids
    uid_bulk, uid_ssh, uid_vnc = await _uids(pool, 3)

    await _record(pool, [_file(device_id, bulk, 1, uid_bulk), _file(device_id, ssh, 1, uid_ssh)])
    found = await _files_of(pool, device_id)
    assert _names(found.current()) == ["bulk", "ssh"]
    assert _names(found.stale()) == ["vnc"]
    assert found.services[1].recorded == RecordedFile(
        1, uid_ssh, f"{uid_ssh}.conf", 101, f"1-{uid_ssh}".ljust(64, "0")
    )
    assert found.services[1].service_uid == uid_ssh

    # Reset for re-provisioning: every file is stale, the service UIDs stay with the device.
    await pool.execute("UPDATE devices SET credential_generation = 2 WHERE id = $1", device_id)
    reset = await _files_of(pool, device_id)
    assert reset.current() == ()
    assert _names(reset.stale()) == ["bulk", "ssh", "vnc"]
    assert [s.service_uid for s in reset.services] == [uid_bulk, uid_ssh, None]

    await _record(
        pool,
        [
            _file(device_id, bulk, 2, uid_bulk),
            _file(device_id, ssh, 2, uid_ssh),
            _file(device_id, vnc, 2, uid_vnc),
        ],
    )
    again = await _files_of(pool, device_id)
    assert _names(again.current()) == ["bulk", "ssh", "vnc"]
    assert again.stale() == ()
    assert [s.recorded.generation for s in again.services if s.recorded] == [2, 2, 2]
    assert [s.service_uid for s in again.services] == [uid_bulk, uid_ssh, uid_vnc]


async def test_an_older_generation_never_replaces_a_newer_one(pool: Pool, product: registry.Product) -> None:
    device_id = await _device(pool, product, "files3")
    ssh = product.service_ids[1]
    (uid,) = await _uids(pool, 1)
    await pool.execute("UPDATE devices SET credential_generation = 2 WHERE id = $1", device_id)
    newer = _file(device_id, ssh, 2, uid, tag="new")
    await _record(pool, [newer])

    # A provisioning instance that read generation 1 commits late; then a redelivered batch.
    await _record(pool, [_file(device_id, ssh, 1, uid, tag="old")])
    await _record(pool, [_file(device_id, ssh, 2, uid, tag="redelivered")])

    recorded = (await _files_of(pool, device_id)).services[1].recorded
    assert recorded == RecordedFile(2, uid, newer.file.file_name, newer.file.size, newer.file.sha256)


async def test_a_disabled_service_is_absent_even_with_a_file_recorded(
    pool: Pool, product: registry.Product
) -> None:
    device_id = await _device(pool, product, "files4")
    ssh = product.service_ids[1]
    (uid,) = await _uids(pool, 1)
    await _record(pool, [_file(device_id, ssh, 1, uid)])
    await pool.execute("UPDATE product_services SET enabled = false WHERE id = $1", ssh)

    found = await _files_of(pool, device_id)

    assert _names(found.services) == ["bulk", "vnc"]


async def test_several_devices_at_once_unknown_ids_absent(pool: Pool, product: registry.Product) -> None:
    first = await _device(pool, product, "files5")
    second = await _device(pool, product, "files6")
    bare = await registry.new_product(
        pool, product.account_id, services=(Service("bulk", "rmt3", 65535, enabled=False),)
    )
    lonely = await registry.new_device(pool, bare, await registry.new_registration(pool, bare), "files7")
    (uid,) = await _uids(pool, 1)
    await _record(pool, [_file(second, product.service_ids[0], 1, uid)])
    unknown = "00000000-0000-4000-8000-000000000000"

    found = await files.device_files(pool, [first, second, first, lonely, unknown])

    assert set(found) == {first, second, lonely}
    assert _names(found[second].current()) == ["bulk"]
    assert found[first].current() == ()
    assert (found[first].hardware_id, found[second].hardware_id) == ("files5", "files6")
    assert found[lonely].services == ()
    assert await files.device_files(pool, []) == {}


async def test_next_service_uids_are_fresh_numbers(pool: Pool) -> None:
    async with pool.acquire() as conn:
        first = await files.next_service_uids(conn, 5)
        second = await files.next_service_uids(conn, 3)
        assert await files.next_service_uids(conn, 0) == []
    assert len(set(first + second)) == 8
    assert min(second) > max(first)


async def test_the_intakes_one_device_lookup_reads_what_the_batch_query_reads(
    pool: Pool, product: registry.Product
) -> None:
    """The intake's lookup of one device is the same query with a one-ID filter: the same
    record, found whatever the case of the ID, and None for an unknown device."""
    device_id = await _device(pool, product, "one-lookup")
    uids = await _uids(pool, 1)
    first = product.service_ids[0]
    await _record(pool, [_file(device_id, first, 1, uids[0])])
    batch = (await files.device_files(pool, [device_id]))[device_id]
    assert await files.one_device_files(pool, device_id) == batch
    assert await files.one_device_files(pool, device_id.upper()) == batch
    assert await files.one_device_files(pool, "00000000-0000-4000-8000-000000000000") is None


async def test_the_hook_data_comes_with_the_same_read_as_the_devices_data_file(
    pool: Pool, product: registry.Product
) -> None:
    """``devices.hook_data`` (migration 0033) is one column more of the one query: None
    without data, else the file rendered from it, changed with it, whatever the jsonb's
    own key order; the services' files are unchanged by it."""
    device_id = await _device(pool, product, "hook-data")
    without = await _files_of(pool, device_id)
    assert without.registration_data is None

    data = {"site": 'Berlin "North"', "zone": "é\n😀", "a key": "x=y"}
    await pool.execute("UPDATE devices SET hook_data = $2::jsonb WHERE id = $1", device_id, json.dumps(data))
    found = await _files_of(pool, device_id)
    assert found.registration_data == registration_data_file(device_id, data)
    assert found.services == without.services
    assert await files.one_device_files(pool, device_id) == found
    async with pool.acquire() as conn, conn.transaction():
        assert (await files.device_files(conn, [device_id], lock=True))[device_id] == found

    await pool.execute("UPDATE devices SET hook_data = '{}'::jsonb WHERE id = $1", device_id)
    empty = (await _files_of(pool, device_id)).registration_data
    assert empty is not None and found.registration_data is not None
    assert empty == registration_data_file(device_id, {})
    assert empty.sha256 != found.registration_data.sha256


async def test_hook_data_that_is_not_an_object_of_strings_fails_only_its_data_file(
    pool: Pool, product: registry.Product
) -> None:
    device_id = await _device(pool, product, "hook-data-bad")
    await pool.execute("""UPDATE devices SET hook_data = '{"n": 1}'::jsonb WHERE id = $1""", device_id)
    found = await _files_of(pool, device_id)  # what provisioning reads: it serves no data file
    assert found.hook_data == '{"n": 1}'
    with pytest.raises(ValueError, match="hook_data"):
        _ = found.registration_data
