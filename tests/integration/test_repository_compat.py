"""shared.db.compat on the real Postgres: what the reference-compatible device API (apv/v27)
reads and writes. Step-1 records only for a current code, one per code, hardware ID and
source address, each read only from its own address, and forgotten after the retention;
provisioning IDs resolved to services whatever text is presented; and the device a step
names, found by its hardware ID in any case, only within the code's account."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from shared.db import compat
from shared.db.compat import Recorded, Reported
from shared.db.pool import Pool
from tests.support import registry
from tests.support.registry import Service

pytestmark = pytest.mark.integration

SERVICES = (
    Service("bulk", "rmt3", 65535),
    Service("ssh", "ssh", 22),
    Service("web", "web", 80, enabled=False),
    Service("vnc", "vnc", 5900),
)
RETENTION_S = 550.0
FORGET_TURN = 0x6672_6F72_6765_74  # pg_advisory_lock key: runs of the forget test take turns


@dataclass(frozen=True)
class Setup:
    account_id: str
    product: registry.Product
    registration_id: str
    code: str
    revoked_code: str

    @property
    def bulk_id(self) -> str:
        return self.product.service_ids[0]

    @property
    def ssh_id(self) -> str:
        return self.product.service_ids[1]


async def _setup(pool: Pool) -> Setup:
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id, kind="auto", services=SERVICES)
    revoked = await registry.new_code(pool, product.id, revoked=True)
    code = await registry.new_code(pool, product.id)
    return Setup(account_id, product, await registry.new_registration(pool, product), code, revoked)


@pytest.fixture
async def setup(pool: Pool) -> Setup:
    return await _setup(pool)


async def _records(pool: Pool, hardware_id: str) -> list[tuple[str, str, str, str, str]]:
    rows = await pool.fetch(
        """SELECT bulk_identification_code, source, fingerprint, secret_digest, os_label
           FROM device_information WHERE hardware_id = $1 ORDER BY source, bulk_identification_code""",
        hardware_id,
    )
    return [tuple(r.values()) for r in rows]  # type: ignore[misc]


async def test_information_is_recorded_only_for_a_current_code(pool: Pool, setup: Setup, unique: str) -> None:
    hardware_id = f"info-{unique}"
    unknown = str(uuid.uuid4()).upper()

    assert not await compat.record_information(pool, unknown, hardware_id, "fp", "sd", "Linux", "10.0.0.1")
    assert not await compat.record_information(
        pool, setup.revoked_code, hardware_id, "fp", "sd", "", "10.0.0.1"
    )
    assert not await compat.record_information(
        pool, setup.code.lower(), hardware_id, "fp", "sd", "", "10.0.0.1"
    )
    assert await _records(pool, hardware_id) == []

    assert await compat.record_information(pool, setup.code, hardware_id, "fp", "sd", "Linux", "10.0.0.1")
    assert await _records(pool, hardware_id) == [(setup.code, "10.0.0.1", "fp", "sd", "Linux")]


async def test_one_record_per_code_hardware_id_and_source(pool: Pool, setup: Setup, unique: str) -> None:
    hardware_id = f"rec-{unique}"
    await compat.record_information(pool, setup.code, hardware_id, "fp1", "sd1", "old", "10.0.0.1")
    before = await pool.fetchval(
        "SELECT updated_at FROM device_information WHERE hardware_id = $1", hardware_id
    )

    await compat.record_information(pool, setup.code, hardware_id, "fp2", "sd2", "new", "10.0.0.1")
    await compat.record_information(pool, setup.code, hardware_id, "fp3", "", "", "10.0.0.2")

    assert await _records(pool, hardware_id) == [
        (setup.code, "10.0.0.1", "fp2", "sd2", "new"),
        (setup.code, "10.0.0.2", "fp3", "", ""),
    ]
    assert (
        await pool.fetchval(
            "SELECT updated_at FROM device_information WHERE hardware_id = $1 AND source = '10.0.0.1'",
            hardware_id,
        )
        > before
    )


async def test_information_is_read_only_from_its_own_source(pool: Pool, setup: Setup, unique: str) -> None:
    hardware_id = f"src-{unique}"
    await compat.record_information(pool, setup.code, hardware_id, "fp-a", "sd-a", "", "10.0.0.1")
    await compat.record_information(pool, setup.code, hardware_id, "fp-b", "sd-b", "", "2001:db8::1")
    other = await _setup(pool)

    assert await compat.information(pool, setup.code, hardware_id, "10.0.0.1") == Reported("fp-a", "sd-a")
    assert await compat.information(pool, setup.code, hardware_id, "2001:db8::1") == Reported("fp-b", "sd-b")
    assert await compat.information(pool, setup.code, hardware_id, "10.0.0.3") == Reported("", "")
    assert await compat.information(pool, setup.code, hardware_id, "") == Reported("", "")
    assert await compat.information(pool, other.code, hardware_id, "10.0.0.1") == Reported("", "")
    assert await compat.information(pool, setup.code, f"{hardware_id}-1", "10.0.0.1") == Reported("", "")


async def test_reports_repeated_from_one_source_keep_one_record(
    pool: Pool, setup: Setup, unique: str
) -> None:
    source = f"repeat-{unique}"
    for i in range(100):
        assert (
            await compat.record_information(pool, setup.code, "board", f"fp{i}", "", "", source)
            is Recorded.STORED
        )
    rows = await pool.fetch(
        "SELECT source, fingerprint FROM device_information WHERE bulk_identification_code = $1", setup.code
    )
    assert [tuple(r) for r in rows] == [(source, "fp99")]


async def test_new_hardware_ids_are_capped_per_source_a_minute_and_overwrites_never(
    pool: Pool, setup: Setup, unique: str
) -> None:
    nat, other = f"nat-{unique}", f"other-{unique}"

    async def report(hardware_id: str, source: str = nat, fingerprint: str = "fp") -> Recorded:
        return await compat.record_information(
            pool, setup.code, hardware_id, fingerprint, "", "", source, new_per_minute=3
        )

    assert [await report(f"h{i}-{unique}") for i in range(3)] == [Recorded.STORED] * 3
    assert not await compat.new_records_capped(pool, other, 3)
    assert await compat.new_records_capped(pool, nat, 3)
    assert await report(f"h3-{unique}") is Recorded.CAPPED  # a fourth new hardware ID: refused
    assert await report(f"h0-{unique}", fingerprint="rebooted") is Recorded.STORED  # an overwrite: never
    assert await report(f"h3-{unique}", source=other) is Recorded.STORED  # another source has its own cap
    assert (
        await compat.record_information(
            pool, str(uuid.uuid4()).upper(), f"h9-{unique}", "fp", "", "", nat, new_per_minute=3
        )
        is Recorded.UNKNOWN_CODE
    )
    stored = await pool.fetch(
        "SELECT hardware_id, fingerprint FROM device_information WHERE source = $1 ORDER BY hardware_id", nat
    )
    assert [(r["hardware_id"], r["fingerprint"]) for r in stored] == [
        (f"h0-{unique}", "rebooted"),
        (f"h1-{unique}", "fp"),
        (f"h2-{unique}", "fp"),
    ]
    # Records older than a minute no longer count: the source may report new ones again.
    await pool.execute(
        "UPDATE device_information SET created_at = now() - interval '61 seconds' WHERE source = $1", nat
    )
    assert not await compat.new_records_capped(pool, nat, 3)
    assert await report(f"h3-{unique}") is Recorded.STORED


async def test_a_nul_in_the_os_label_is_dropped(pool: Pool, setup: Setup, unique: str) -> None:
    hardware_id = f"nul-{unique}"

    assert await compat.record_information(
        pool, setup.code, hardware_id, "fp", "sd", "Linux\0 6.1\0", "10.0.0.1"
    )

    assert await _records(pool, hardware_id) == [(setup.code, "10.0.0.1", "fp", "sd", "Linux 6.1")]


async def test_forget_information_deletes_records_older_than_the_retention(
    pool: Pool, setup: Setup, unique: str
) -> None:
    """forget_information deletes across accounts, and intakes on this database run it with
    a retention of 600 s or more: these records are younger than that, and runs of this
    test, which use a shorter retention, take turns."""
    ages_s = {"old1": 590.0, "old2": 590.0, "old3": 580.0, "kept": 500.0, "fresh": 0.0}
    async with pool.acquire() as turn:
        await turn.execute("SELECT pg_advisory_lock($1)", FORGET_TURN)
        try:
            for name, age_s in ages_s.items():
                await compat.record_information(
                    pool, setup.code, f"{name}-{unique}", "fp", "sd", "", "10.0.0.1"
                )
                await pool.execute(
                    """UPDATE device_information SET updated_at = now() - make_interval(secs => $2)
                       WHERE hardware_id = $1""",
                    f"{name}-{unique}",
                    age_s,
                )

            # One at a time: it goes on until none is left.
            deleted = await compat.forget_information(pool, RETENTION_S, batch=1)
        finally:
            await turn.execute("SELECT pg_advisory_unlock($1)", FORGET_TURN)

    assert deleted >= 3
    left = await pool.fetch(
        "SELECT hardware_id FROM device_information WHERE hardware_id LIKE '%-' || $1", unique
    )
    assert sorted(r["hardware_id"] for r in left) == [f"fresh-{unique}", f"kept-{unique}"]


async def test_provisioning_ids_are_the_code_then_each_enabled_service(pool: Pool, setup: Setup) -> None:
    _, ssh, _, vnc = setup.product.service_ids

    assert await compat.provisioning_ids(pool, setup.code) == [setup.code, ssh.upper(), vnc.upper()]
    assert await compat.provisioning_ids(pool, str(uuid.uuid4()).upper()) == []


async def test_service_by_its_service_id_in_either_case(pool: Pool, setup: Setup) -> None:
    changed_epoch = await pool.fetchval(
        "SELECT extract(epoch FROM locked_at)::bigint FROM products WHERE id = $1", setup.product.id
    )
    expected = compat.Service(
        service_id=setup.ssh_id,
        is_bulk_service=False,
        type_code=28,
        port=22,
        enabled=True,
        product_id=setup.product.id,
        account_id=setup.account_id,
        registration_kind="auto",
        changed_epoch=changed_epoch,
        code=setup.code,
    )

    assert await compat.service(pool, setup.ssh_id) == expected
    assert await compat.service(pool, setup.ssh_id.upper()) == expected
    web = await compat.service(pool, setup.product.service_ids[2])
    assert web is not None
    assert (web.enabled, web.type_code, web.port) == (False, 7, 80)
    bulk = await compat.service(pool, setup.bulk_id)  # the bulk service by its own ID
    assert bulk is not None
    assert (bulk.is_bulk_service, bulk.code) == (True, setup.code)


async def test_service_by_the_current_code_only(pool: Pool, setup: Setup) -> None:
    by_code = await compat.service(pool, setup.code)
    by_lower_case = await compat.service(pool, setup.code.lower())
    product_code = await pool.fetchval("SELECT product_code FROM products WHERE id = $1", setup.product.id)

    assert by_code is not None
    assert (by_code.service_id, by_code.is_bulk_service, by_code.type_code, by_code.port) == (
        setup.bulk_id,
        True,
        35,
        65535,
    )
    assert (by_code.code, by_code.account_id) == (setup.code, setup.account_id)
    assert by_lower_case == by_code
    assert await compat.service(pool, setup.revoked_code) is None
    assert await compat.service(pool, product_code) is None
    assert await compat.service(pool, str(uuid.uuid4())) is None


async def test_service_of_a_product_not_locked_is_none(pool: Pool) -> None:
    product = await registry.new_product(pool, await registry.new_account(pool), locked=False)

    assert await compat.service(pool, product.service_ids[1]) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "\0",
        "' OR 1=1 --",
        "00000000-0000-0000-0000-00000000000\0",
        "{00000000-0000-0000-0000-000000000000}",
        "00000000000000000000000000000000",
        "urn:uuid:00000000-0000-0000-0000-000000000000",
        "é" * 36,
        "\u0660" * 8 + "-0000-0000-0000-" + "0" * 12,  # Arabic-Indic digits: digits, not hex
        " 00000000-0000-0000-0000-000000000000",
        "x" * 100_000,
    ],
    ids=lambda text: ascii(text)[:40],
)
async def test_garbage_is_no_provisioning_id_and_no_error(pool: Pool, text: str) -> None:
    assert await compat.service(pool, text) is None


async def test_a_service_id_in_a_form_python_accepts_is_still_refused(pool: Pool, setup: Setup) -> None:
    """uuid.UUID takes braces, a urn: prefix or no dashes; a provisioning ID is the 36 characters."""
    hex_only = setup.ssh_id.replace("-", "")

    for text in (hex_only, f"{{{setup.ssh_id}}}", f"urn:uuid:{setup.ssh_id}", f"{setup.ssh_id}\n"):
        assert await compat.service(pool, text) is None, text


async def _file(pool: Pool, device_id: str, service_id: str, generation: int) -> str:
    uid = f"UID-{uuid.uuid4().hex}"
    await pool.execute(
        """INSERT INTO provisioning_files (device_id, product_service_id, generation, service_uid, file_name,
                                          size, sha256)
           VALUES ($1, $2, $3, $4, $4 || '.conf', 1, repeat('0', 64))""",
        device_id,
        service_id,
        generation,
        uid,
    )
    return uid


async def test_device_by_hardware_id_in_any_case_within_the_account(pool: Pool, setup: Setup) -> None:
    device_id = await registry.new_device(
        pool,
        setup.product,
        setup.registration_id,
        "B827EB8905E5",
        fingerprint="fp",
        key_digest=bytes.fromhex("abcd"),
    )
    other = await _setup(pool)
    theirs = await registry.new_device(pool, other.product, other.registration_id, "b827eb8905e5")

    found = await compat.device(pool, setup.account_id, "b827eb8905e5", setup.ssh_id)

    assert found == compat.DeviceCredentials(
        device_id=device_id,
        hardware_id="B827EB8905E5",
        lifecycle="registered",
        disabled=False,
        fingerprint="fp",
        credential_generation=1,
        registration_key_digest="abcd",
        service_uid=None,
        provisioned_files=False,
        registered_with_key=False,
    )
    assert found.files_ready is False
    assert await compat.device(pool, setup.account_id, "B827eb8905E5", setup.ssh_id) == found
    theirs_found = await compat.device(pool, other.account_id, "B827EB8905E5", other.ssh_id)
    assert theirs_found is not None
    assert theirs_found.device_id == theirs
    assert await compat.device(pool, setup.account_id, "B827EB8905E", setup.ssh_id) is None
    assert await compat.device(pool, await registry.new_account(pool), "B827EB8905E5", setup.ssh_id) is None


async def test_device_is_found_only_in_the_product_of_the_service_asked_about(
    pool: Pool, setup: Setup
) -> None:
    """A claim stays in its product: another product of the same account holding the
    hardware ID is no device of this product's services (reference steps 5 and 6)."""
    other = await registry.new_product(pool, setup.account_id, kind="bulk", services=SERVICES)
    theirs = await registry.new_device(
        pool, other, await registry.new_registration(pool, other), "Moved-HW", fingerprint="fp"
    )

    assert await compat.device(pool, setup.account_id, "moved-hw", setup.ssh_id) is None
    assert await compat.device(pool, setup.account_id, "moved-hw", setup.bulk_id) is None
    found = await compat.device(pool, setup.account_id, "moved-hw", other.service_ids[0])
    assert found is not None and found.device_id == theirs


async def test_device_files_follow_the_credential_generation(pool: Pool, setup: Setup) -> None:
    device_id = await registry.new_device(pool, setup.product, setup.registration_id, "gen-hw")
    uid = await _file(pool, device_id, setup.ssh_id, 1)
    await pool.execute(
        """INSERT INTO registration_decisions (request_id, device_id, claimed_hardware_id, decision,
                                              idempotency_key, status, received_at)
           VALUES ($1, $2, 'gen-hw', 'new', 'key-1', 'ready', now())""",
        uuid.uuid4(),
        device_id,
    )

    ready = await compat.device(pool, setup.account_id, "GEN-HW", setup.ssh_id)
    for_bulk = await compat.device(pool, setup.account_id, "gen-hw", setup.bulk_id)
    await pool.execute("UPDATE devices SET credential_generation = 2 WHERE id = $1", device_id)
    after_reset = await compat.device(pool, setup.account_id, "gen-hw", setup.ssh_id)

    assert ready is not None
    assert (ready.service_uid, ready.provisioned_files, ready.registered_with_key, ready.files_ready) == (
        uid,
        True,
        True,
        True,
    )
    assert for_bulk is not None
    assert (for_bulk.service_uid, for_bulk.files_ready) == (None, False)  # no file for that service
    assert after_reset is not None
    assert (after_reset.credential_generation, after_reset.service_uid, after_reset.files_ready) == (
        2,
        None,
        False,
    )
