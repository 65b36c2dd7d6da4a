"""Device certificates on the real Postgres: the cap of unexpired certificates per device
(revoked or not), decided under the device row's lock so a parallel burst on several
intake instances never passes it; and the CRL kept per account, dropped only by its own
account's revocation (``crl:<account ID>`` on fleetreg_invalidate)."""

from __future__ import annotations

import asyncio

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.intake import certificates
from services.intake.certificates import CertificateLimit, Issuer
from shared.db import certificates as registry
from shared.db.pool import Pool
from shared.db.throttle import Listener
from shared.domain.certificates import DeviceCertificate, IssuingCa, Revoked, device_certificate
from tests.support import registry as rows

pytestmark = pytest.mark.integration

SECRET = b"c" * 32


def _csr() -> x509.CertificateSigningRequest:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anything")])
    key = ec.generate_private_key(ec.SECP256R1())
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())


async def _device(pool: Pool) -> tuple[str, str]:
    """(account ID, device ID) of a new enabled device at credential generation 1."""
    account_id = await rows.new_account(pool)
    product = await rows.new_product(pool, account_id)
    registration_id = await rows.new_registration(pool, product)
    return account_id, await rows.new_device(pool, product, registration_id, "cap-board")


async def _issue(pool: Pool, issuer: Issuer, device_id: str) -> certificates.Issued:
    return await certificates.issue(pool, issuer, device_id, _csr(), lambda g: g == 1, via="native")


async def _held(pool: Pool, device_id: str) -> int:
    held: int = await pool.fetchval(
        "SELECT count(*) FROM device_certificates WHERE device_id = $1", device_id
    )
    return held


async def test_a_parallel_burst_on_two_instances_records_exactly_the_cap(pool: Pool) -> None:
    _, device_id = await _device(pool)
    # Two intake instances (each its own Issuer), 40 calls at once through the pool's
    # ten connections: the count is decided under the device row's lock, never overshot.
    instances = [Issuer(SECRET, 365, max_per_device=5), Issuer(SECRET, 365, max_per_device=5)]
    results = await asyncio.gather(
        *(_issue(pool, instances[i % 2], device_id) for i in range(40)), return_exceptions=True
    )

    issued = [r for r in results if isinstance(r, certificates.Issued)]
    refused = [r for r in results if isinstance(r, CertificateLimit)]
    assert (len(issued), len(refused)) == (5, 35), [r for r in results if isinstance(r, BaseException)]
    assert await _held(pool, device_id) == 5
    body = refused[0].to_dict()
    assert refused[0].status == 409 and body["error"] == "certificate_limit"
    assert body["rule"] == "max_certificates_per_device=5"
    oldest = min(i.certificate.not_after for i in issued)
    assert body["available_at"] == oldest.isoformat()  # when the oldest expires: room for one
    assert "GET /v1/devices/{device_id}/certificate" in body["message"]


async def test_a_batch_decides_each_request_on_its_own(pool: Pool) -> None:
    """Concurrent issuances share a transaction (record_certificates); each request still
    gets its own outcome: another account's device is signed with its own CA, a disabled
    device or a stale generation gets nothing, a CA that is not the account's current one
    is stale, and a signer that raises fails its own request only."""
    issuer = Issuer(SECRET, 365, max_per_device=2)
    (first_account, first), (second_account, second) = await _device(pool), await _device(pool)
    _, disabled = await _device(pool)
    await pool.execute("UPDATE devices SET disabled = true WHERE id = $1", disabled)
    first_ca = await issuer.ca(pool, first_account)
    second_ca = await issuer.ca(pool, second_account)

    def sign(ca: IssuingCa, device_id: str) -> DeviceCertificate:
        return device_certificate(ca, _csr(), "cap-board", device_id, 365)

    def broken() -> DeviceCertificate:
        raise ValueError("this request's own CSR")

    request = registry.CertificateRequest
    outcomes = await registry.record_certificates(
        pool,
        [
            request(first, 1, "cap-board", lambda: sign(first_ca, first), first_ca.der),
            request(second, 1, "cap-board", lambda: sign(second_ca, second), second_ca.der),
            request(first, 1, "cap-board", broken, first_ca.der),
            request(disabled, 1, "cap-board", lambda: sign(first_ca, disabled), first_ca.der),
            request(second, 2, "cap-board", lambda: sign(second_ca, second), second_ca.der),
            request(second, 1, "cap-board", lambda: sign(first_ca, second), first_ca.der),
            request(first, 1, "cap-board", lambda: sign(first_ca, first), first_ca.der),
            request(first, 1, "cap-board", lambda: sign(first_ca, first), first_ca.der),
        ],
        limit=2,
    )
    kinds = [type(o).__name__ for o in outcomes]
    assert kinds == [
        "DeviceCertificate",
        "DeviceCertificate",
        "ValueError",
        "NoneType",
        "NoneType",
        "StaleCa",
        "DeviceCertificate",
        "AtCertificateLimit",  # the batch's own two count: the cap holds inside a batch too
    ]
    assert (await _held(pool, first), await _held(pool, second), await _held(pool, disabled)) == (2, 1, 0)
    recorded = await pool.fetch(
        "SELECT device_id::text, account_id::text FROM device_certificates WHERE device_id = ANY($1::uuid[])",
        [first, second],
    )
    assert {(r["device_id"], r["account_id"]) for r in recorded} == {
        (first, first_account),
        (second, second_account),
    }


async def test_revoked_certificates_count_and_expired_ones_free_their_place(pool: Pool) -> None:
    _, device_id = await _device(pool)
    issuer = Issuer(SECRET, 365, max_per_device=3)
    for _ in range(3):
        await _issue(pool, issuer, device_id)
    async with pool.acquire() as conn, conn.transaction():
        # A reclaim before "ready" revokes them, at the same credential generation here:
        # revoked, they are in the CRL until they expire, so they still count.
        assert len(await registry.revoke_devices(conn, [device_id], "reset")) == 3

    with pytest.raises(CertificateLimit):
        await _issue(pool, issuer, device_id)
    assert await _held(pool, device_id) == 3

    await pool.execute(
        """UPDATE device_certificates SET not_after = now() - interval '1 second'
           WHERE serial = (SELECT serial FROM device_certificates WHERE device_id = $1
                           ORDER BY not_after LIMIT 1)""",
        device_id,
    )
    await _issue(pool, issuer, device_id)  # an expired one is in no CRL: its place is free
    with pytest.raises(CertificateLimit):
        await _issue(pool, issuer, device_id)


async def test_a_lowered_cap_names_when_enough_expire(pool: Pool) -> None:
    _, device_id = await _device(pool)
    issued = [await _issue(pool, Issuer(SECRET, 365, max_per_device=4), device_id) for _ in range(4)]
    with pytest.raises(CertificateLimit) as refused:
        await _issue(pool, Issuer(SECRET, 365, max_per_device=2), device_id)
    ends = sorted(i.certificate.not_after for i in issued)
    # 4 held, 2 allowed: three must expire before one more fits.
    assert refused.value.available_at == ends[2]


async def test_a_revocation_drops_its_own_accounts_crl_only(pool: Pool, migrated: str) -> None:
    (account_a, device_a), (account_b, device_b) = await _device(pool), await _device(pool)
    issuer = Issuer(SECRET, 365)
    issued_a = await _issue(pool, issuer, device_a)
    await _issue(pool, issuer, device_b)
    heard: list[str] = []

    def deliver(payload: str) -> None:
        heard.append(payload)
        issuer.apply(payload)

    listener = Listener(migrated, deliver, issuer.listening)
    await listener.start()
    reads: list[str] = []
    read = registry.revoked

    async def counted(db: Pool, account_id: str) -> list[Revoked]:
        reads.append(account_id)
        return await read(db, account_id)

    try:
        issuer.listening(True)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(registry, "revoked", counted)
            await issuer.crl(pool, account_a)
            await issuer.crl(pool, account_b)
            assert reads == [account_a, account_b]

            async with pool.acquire() as conn, conn.transaction():
                await registry.revoke_devices(conn, [device_a], "disabled")
            async with asyncio.timeout(5):
                while f"crl:{account_a}" not in heard:
                    await asyncio.sleep(0.01)

            crl_a = x509.load_der_x509_crl(await issuer.crl(pool, account_a))
            await issuer.crl(pool, account_b)  # kept: account B revoked nothing
            await issuer.crl(pool, account_a)  # kept again until A's next signal
    finally:
        await listener.stop()
    assert reads == [account_a, account_b, account_a]
    assert crl_a.get_revoked_certificate_by_serial_number(int(issued_a.certificate.serial, 16)) is not None
    assert f"crl:{account_b}" not in heard


async def test_a_revocation_of_many_certificates_is_announced_once(pool: Pool, migrated: str) -> None:
    account_id, device_id = await _device(pool)
    issuer = Issuer(SECRET, 365)
    for _ in range(4):
        await _issue(pool, issuer, device_id)
    heard: list[str] = []
    listener = Listener(migrated, heard.append, lambda _up: None)
    await listener.start()
    try:
        async with pool.acquire() as conn, conn.transaction():
            assert len(await registry.revoke_devices(conn, [device_id], "reset")) == 4
        await asyncio.sleep(0.3)  # delivered at commit; give it time to arrive
    finally:
        await listener.stop()
    assert heard.count(f"crl:{account_id}") == 1
