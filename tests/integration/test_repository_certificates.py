"""shared.db.certificates on the real Postgres: the intake records the certificates of
concurrent registrations in one statement, and each is recorded only when its device is
still enabled, at the proven credential generation and with its hardware ID (a disable,
reset or rename that committed first leaves nothing recorded for it)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from cli.commands.simulate import device_csr
from services.intake.certificates import Issuer
from shared.db.certificates import CertificateRecord, record_certificates
from shared.db.pool import Pool
from shared.domain.certificates import device_certificate, new_issuing_ca, parse_csr
from tests.support import registry

pytestmark = pytest.mark.integration

CSR = parse_csr(device_csr())


async def _records(pool: Pool, count: int) -> tuple[str, list[CertificateRecord]]:
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id, kind="auto")
    registration_id = await registry.new_registration(pool, product)
    ca = new_issuing_ca(account_id)
    out = []
    for n in range(count):
        device_id = await registry.new_device(pool, product, registration_id, f"cert-{account_id[:8]}-{n}")
        hardware_id = f"cert-{account_id[:8]}-{n}"
        issued = device_certificate(ca, CSR, hardware_id, device_id, 30, datetime.now(UTC))
        out.append(CertificateRecord(device_id, 1, hardware_id, issued))
    return account_id, out


async def _recorded(pool: Pool, account_id: str) -> set[str]:
    rows = await pool.fetch("SELECT serial FROM device_certificates WHERE account_id = $1", account_id)
    return {r["serial"] for r in rows}


async def test_a_batch_records_only_the_certificates_of_devices_still_as_proven(pool: Pool) -> None:
    account_id, (kept, disabled, reset, renamed, twice) = await _records(pool, 5)
    await pool.execute("UPDATE devices SET disabled = true WHERE id = $1", disabled.device_id)
    await pool.execute(
        "UPDATE devices SET credential_generation = credential_generation + 1 WHERE id = $1", reset.device_id
    )
    await pool.execute(
        "UPDATE devices SET hardware_id = hardware_id || '-x' WHERE id = $1", renamed.device_id
    )
    again = CertificateRecord(
        twice.device_id,
        1,
        twice.hardware_id,
        device_certificate(new_issuing_ca(account_id), CSR, twice.hardware_id, twice.device_id, 30),
    )  # a lost response's retry: two certificates of one device in one batch
    batch = [kept, disabled, reset, renamed, twice, again]
    assert await record_certificates(pool, batch) == [True, False, False, False, True, True]
    assert await _recorded(pool, account_id) == {kept.issued.serial, twice.issued.serial, again.issued.serial}
    assert await record_certificates(pool, []) == []


async def test_the_intakes_concurrent_records_share_statements(pool: Pool) -> None:
    account_id, records = await _records(pool, 12)
    issuer = Issuer(b"k" * 32, 30)
    assert await asyncio.gather(*(issuer.record(pool, r) for r in records)) == [True] * 12
    assert await _recorded(pool, account_id) == {r.issued.serial for r in records}
    assert issuer._records is not None and issuer._records.batches < 12
