"""``PUT /v1/account/issuing-ca``'s handler and registry on the real Postgres: an uploaded
intermediate replaces the account's issuing CA (sealed as a self-made one, audited with
its subject and fingerprint, never its key), only while the account holds no unexpired
device certificate (409 ``issuing_ca_in_use``, also against an issuance in flight), and an
intake that kept the former CA signs nothing with it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.intake.certificates import Issuer, issue
from services.operator.handlers import access as handlers
from shared.db import certificates
from shared.db.pool import Pool
from shared.db.throttle import Listener
from shared.domain.accounts import Account
from shared.errors import Conflict, InvalidInput
from shared.settings import Secret
from tests.support import registry
from tests.support.pki import hostile_uploads, new_pki, pem

pytestmark = pytest.mark.integration

SECRET = Secret("a" * 64)
KEY = SECRET.reveal().encode()


def csr() -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )


async def test_an_upload_replaces_the_ca_sealed_and_audited_without_its_key(pool: Pool) -> None:
    account = Account(await registry.new_account(pool), "test")
    pki = new_pki()
    uploaded = await handlers.upload_issuing_ca(pool, SECRET, account, pki.body())
    stored = await certificates.issuing_ca(pool, KEY, account.id)
    assert stored is not None and stored.uploaded_at is not None
    assert stored.certificate == pki.intermediate and stored.der == uploaded.der
    assert stored.chain == (pki.root.public_bytes(serialization.Encoding.DER),)
    row = await pool.fetchrow("SELECT sealed_key FROM issuing_cas WHERE account_id = $1", account.id)
    assert b"PRIVATE KEY" not in row["sealed_key"]  # sealed, as a self-made key is
    events = await pool.fetch(
        "SELECT action, changes FROM operator_audit_events WHERE account_id = $1", uuid.UUID(account.id)
    )
    assert [e["action"] for e in events] == ["issuing_ca.uploaded"]
    changes = json.loads(events[0]["changes"])
    fingerprint = hashlib.sha256(pki.intermediate.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert changes == {
        "subject": pki.intermediate.subject.rfc4514_string(),
        "fingerprint_sha256": fingerprint,
    }
    # A refused upload changes nothing.
    with pytest.raises(InvalidInput):
        await handlers.upload_issuing_ca(pool, SECRET, account, {**new_pki().body(), "private_key": "x"})
    after = await certificates.issuing_ca(pool, KEY, account.id)
    assert after is not None and (after.der, after.uploaded_at) == (stored.der, stored.uploaded_at)


async def test_unexpired_certificates_of_the_current_ca_refuse_a_replacement(pool: Pool) -> None:
    account = Account(await registry.new_account(pool), "test")
    product = await registry.new_product(pool, account.id)
    registration = await registry.new_registration(pool, product)
    device = await registry.new_device(pool, product, registration, "h1")
    issuer = Issuer(KEY, 30)
    self_made = await issuer.ca(pool, account.id)
    first = await issue(pool, issuer, device, csr(), lambda _: True, via="test")
    assert first.ca == self_made
    with pytest.raises(handlers.IssuingCaInUse) as caught:
        await handlers.upload_issuing_ca(pool, SECRET, account, new_pki().body())
    assert caught.value.status == 409 and caught.value.code == "issuing_ca_in_use"
    assert "orphan" in caught.value.message and "/crl" in caught.value.message
    # Revoked but unexpired still counts (its revocation is in the CRL) ...
    await pool.execute("UPDATE device_certificates SET revoked_at = now() WHERE account_id = $1", account.id)
    with pytest.raises(handlers.IssuingCaInUse):
        await handlers.upload_issuing_ca(pool, SECRET, account, new_pki().body())
    # ... expired does not.
    await pool.execute(
        "UPDATE device_certificates SET not_after = now() - interval '1 second' WHERE account_id = $1",
        account.id,
    )
    pki = new_pki()
    await handlers.upload_issuing_ca(pool, SECRET, account, pki.body())
    # This intake still keeps the self-made CA (no listener in this test): it signs nothing
    # with it, reads the uploaded one and signs with that.
    second = await issue(pool, issuer, device, csr(), lambda _: True, via="test")
    assert second.ca.certificate == pki.intermediate
    x509.load_der_x509_certificate(second.certificate.der).verify_directly_issued_by(pki.intermediate)
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM device_certificates WHERE account_id = $1 AND not_after > now()", account.id
        )
        == 1
    )


async def test_an_issuance_in_flight_makes_a_concurrent_upload_wait_then_refuse(pool: Pool) -> None:
    account = Account(await registry.new_account(pool), "test")
    product = await registry.new_product(pool, account.id)
    device = await registry.new_device(pool, product, await registry.new_registration(pool, product), "h2")
    ca = await Issuer(KEY, 30).ca(pool, account.id)
    async with pool.acquire() as conn, conn.transaction():
        # What record_certificates does, held open: the device row and the CA's lock held.
        locked = await conn.fetch(certificates.LOCK_DEVICES, [device])
        assert [r["account_id"] for r in locked] == [account.id]
        cas = await conn.fetch(certificates.SELECT_CAS, [account.id])
        assert [bytes(r["certificate"]) for r in cas] == [ca.der]
        held = await conn.fetch(certificates.SELECT_UNEXPIRED, [device])
        assert [r["held"] for r in held] == [[]]
        await conn.execute(
            certificates.INSERT_CERTIFICATES,
            [device],
            [uuid.uuid4().hex],
            [b"k" * 32],
            [b"der"],
            [datetime.now(UTC) + timedelta(days=1)],
        )
        upload = asyncio.create_task(handlers.upload_issuing_ca(pool, SECRET, account, new_pki().body()))
        await asyncio.sleep(0.3)
        assert not upload.done()  # waits for the issuance's transaction
    with pytest.raises(handlers.IssuingCaInUse):
        await upload


async def test_an_upload_is_announced_and_each_intake_drops_its_kept_ca_and_crl(
    pool: Pool, migrated: str
) -> None:
    account = Account(await registry.new_account(pool), "test")
    other = Account(await registry.new_account(pool), "test")
    issuer = Issuer(KEY, 30)
    heard: list[str] = []

    def deliver(payload: str) -> None:
        heard.append(payload)
        issuer.apply(payload)

    listener = Listener(migrated, deliver, issuer.listening)
    await listener.start()
    try:
        issuer.listening(True)
        self_made = await issuer.ca(pool, account.id)
        kept_other = await issuer.ca(pool, other.id)
        before = x509.load_der_x509_crl(await issuer.crl(pool, account.id))
        assert before.issuer == self_made.certificate.subject
        pki = new_pki()
        await handlers.upload_issuing_ca(pool, SECRET, account, pki.body())
        async with asyncio.timeout(5):
            while f"issuer:{account.id}" not in heard:
                await asyncio.sleep(0.01)
        assert (await issuer.ca(pool, account.id)).certificate == pki.intermediate
        after = x509.load_der_x509_crl(await issuer.crl(pool, account.id))
        assert after.issuer == pki.intermediate.subject and after.is_signature_valid(pki.key.public_key())
        assert await issuer.ca(pool, other.id) is kept_other  # another account's stays kept
    finally:
        await listener.stop()


async def test_two_accounts_may_not_share_an_intermediates_subject(pool: Pool) -> None:
    first, second = [Account(await registry.new_account(pool), "test") for _ in range(2)]
    pki = new_pki()
    await handlers.upload_issuing_ca(pool, SECRET, first, pki.body())
    with pytest.raises(Conflict) as caught:
        await handlers.upload_issuing_ca(pool, SECRET, second, pki.body())
    assert caught.value.rule == "subject_unique"
    # The first account may upload it again (nothing issued yet).
    await handlers.upload_issuing_ca(pool, SECRET, first, pki.body())


async def test_a_subject_only_case_or_spaces_apart_from_another_accounts_is_refused(pool: Pool) -> None:
    # A relying party compares names case-folded, inner spaces collapsed (RFC 5280 7.1,
    # OpenSSL's canonical form): to it these are one issuer, and so one CRL.
    first, second = [Account(await registry.new_account(pool), "test") for _ in range(2)]
    name = f"Example Devices {uuid.uuid4().hex[:12]}"
    await handlers.upload_issuing_ca(pool, SECRET, first, new_pki(name).body())
    with pytest.raises(Conflict) as caught:
        await handlers.upload_issuing_ca(pool, SECRET, second, new_pki(f" {name.upper()}").body())
    assert caught.value.rule == "subject_unique"
    with pytest.raises(Conflict):
        await handlers.upload_issuing_ca(pool, SECRET, second, new_pki(name.replace(" ", "   ")).body())
    assert (await handlers.issuing_ca(pool, SECRET, second)).uploaded_at is None


async def test_a_refused_upload_writes_nothing(pool: Pool) -> None:
    account = Account(await registry.new_account(pool), "test")
    before = await handlers.issuing_ca(pool, SECRET, account)
    for what, body, field, rule in hostile_uploads():
        with pytest.raises(InvalidInput) as caught:
            await handlers.upload_issuing_ca(pool, SECRET, account, body)
        assert (caught.value.field, caught.value.rule) == (field, rule), what
    after = await handlers.issuing_ca(pool, SECRET, account)
    assert after.der == before.der and after.uploaded_at is None
    audited = await pool.fetchval(
        "SELECT count(*) FROM operator_audit_events WHERE account_id = $1", uuid.UUID(account.id)
    )
    assert audited == 0


async def test_an_upload_is_checked_off_the_event_loop(pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Checking an RSA-4096 key takes about half a second of OpenSSL: on the event loop, it
    # held every other request of the operator service meanwhile.
    loop_thread = threading.get_ident()
    checked_in: list[int] = []

    def checked_upload(body: dict[str, Any]) -> Any:
        checked_in.append(threading.get_ident())
        return real(body)

    real = handlers.checked_upload
    monkeypatch.setattr(handlers, "checked_upload", checked_upload)
    account = Account(await registry.new_account(pool), "test")
    await handlers.upload_issuing_ca(pool, SECRET, account, new_pki().body())
    assert checked_in and loop_thread not in checked_in


async def test_the_same_upload_again_changes_nothing_even_with_certificates_out(pool: Pool) -> None:
    # A retried PUT (the CLI run twice, an answer lost) after devices got certificates was a
    # 409 issuing_ca_in_use, though replacing the CA by itself orphans nothing.
    account = Account(await registry.new_account(pool), "test")
    product = await registry.new_product(pool, account.id)
    device = await registry.new_device(pool, product, await registry.new_registration(pool, product), "h1")
    pki = new_pki()
    first = await handlers.upload_issuing_ca(pool, SECRET, account, pki.body())
    await issue(pool, Issuer(KEY, 30), device, csr(), lambda _: True, via="test")
    again = await handlers.upload_issuing_ca(pool, SECRET, account, pki.body())
    assert again.der == first.der and again.uploaded_at == first.uploaded_at
    audited = await pool.fetchval(
        "SELECT count(*) FROM operator_audit_events WHERE account_id = $1", uuid.UUID(account.id)
    )
    assert audited == 1
    # Another chain (the root left out) is another CA answer: still refused.
    with pytest.raises(handlers.IssuingCaInUse):
        await handlers.upload_issuing_ca(
            pool, SECRET, account, {**pki.body(), "certificate": pem(pki.intermediate)}
        )
