"""Attestation CAs on the real Postgres, through the operator's handlers
(services/operator/handlers/attestation.py over shared/db/attestation_cas.py): upload,
the proof of possession, revoked serials, CRLs, deletion, the audit trail, the bounds, and
one account's CA never seen by or trusted for another."""

from __future__ import annotations

import base64
import uuid

import pytest

from services.operator.handlers import attestation as handlers
from shared.db import attestation_cas, audit, registrations
from shared.db.audit import AuditFilter
from shared.db.pool import Pool
from shared.domain.accounts import Account
from shared.errors import Conflict, InvalidInput, NotFound
from tests.support import registry
from tests.support import x509 as certs

pytestmark = pytest.mark.integration


async def _x509(pool: Pool, *, attestation: str = "x509") -> tuple[Account, str]:
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id)
    await registry.new_code(pool, product.id)
    actor = Account(account_id, "test")
    registration_id = await registrations.create_registration(
        pool, actor, product.id, "auto", "active", x509=attestation == "x509", hardware_id_from="san:dns"
    )
    return actor, registration_id


async def test_upload_verify_revoke_crl_and_delete(pool: Pool) -> None:
    actor, registration_id = await _x509(pool)
    found = await registrations.get_registration(pool, actor.id, "auto", registration_id)
    assert (found.attestation, found.hardware_id_from) == ("x509", "san:dns")
    root = certs.ca("Line CA")
    added = await handlers.add_ca(pool, actor, registration_id, {"certificate": root.pem})
    assert added.verified_at is None and len(added.verification_code) == 32
    assert added.serial == format(root.certificate.serial_number, "x")
    # Unverified: not among what the TLS listener accepts.
    ders = await attestation_cas.verified_ca_ders(pool)
    assert added.certificate not in ders
    with pytest.raises(Conflict) as twice:
        await handlers.add_ca(pool, actor, registration_id, {"certificate": root.pem})
    assert twice.value.rule == "unique"

    # A forged proof (another key, the same issuer name and code) and a wrong code fail.
    forger = certs.ca("Line CA")
    for wrong, rule in (
        (certs.verification(forger, added.verification_code), "signed_by_ca"),
        (certs.verification(root, "0" * 32), "cn=verification_code"),
    ):
        with pytest.raises(InvalidInput) as caught:
            await handlers.verify_ca(pool, actor, added.id, {"verification_certificate": wrong.pem})
        assert caught.value.rule == rule
    assert (await handlers.get_ca(pool, actor, added.id)).verified_at is None
    proof = certs.verification(root, added.verification_code)
    verified = await handlers.verify_ca(pool, actor, added.id, {"verification_certificate": proof.pem})
    assert verified.verified_at is not None
    assert added.certificate in await attestation_cas.verified_ca_ders(pool)

    # Revoked serials, in the forms operators write them.
    after = await handlers.revoke_serial(pool, actor, added.id, {"serial": "0A:BC:DE"})
    after = await handlers.revoke_serial(pool, actor, added.id, {"serial": "0xabcde"})  # the same
    after = await handlers.revoke_serial(pool, actor, added.id, {"serial": "ff"})
    assert after.revoked_serials == ("abcde", "ff")
    after = await handlers.unrevoke_serial(pool, actor, added.id, {"serial": "FF"})
    assert after.revoked_serials == ("abcde",)
    with pytest.raises(InvalidInput):
        await handlers.revoke_serial(pool, actor, added.id, {"serial": "not hex"})

    # A CRL: the CA's own (PEM or base64 DER); another CA's or a forged one is refused.
    der = certs.crl(root, [7, 8])
    stored = await handlers.upload_crl(pool, actor, added.id, {"crl": base64.b64encode(der).decode()})
    assert stored.crl_uploaded_at is not None and stored.crl_next_update is not None
    assert await attestation_cas.stored_crl(pool, actor.id, added.id) == der
    for crl, rule in (
        (certs.crl(root, [1], signer=forger.key), "signature"),
        (certs.crl(certs.ca("Another CA"), [1]), "issuer"),
    ):
        with pytest.raises(InvalidInput) as caught:
            await handlers.upload_crl(pool, actor, added.id, {"crl": base64.b64encode(crl).decode()})
        assert caught.value.rule == rule
    with pytest.raises(InvalidInput):
        await handlers.upload_crl(pool, actor, added.id, {"crl": "%%% garbage"})

    trust = await attestation_cas.trust_of_registration(pool, registration_id)
    assert [(t.id, t.verified, t.revoked_serials, t.crl) for t in trust] == [
        (added.id, True, ("abcde",), der)
    ]

    events = await audit.list_events(pool, actor.id, AuditFilter(target_id=added.id), limit=50)
    actions = [e.action for e in events]
    assert sorted(set(actions)) == [
        "attestation_ca.added",
        "attestation_ca.crl_uploaded",
        "attestation_ca.serial_revoked",
        "attestation_ca.serial_unrevoked",
        "attestation_ca.verified",
    ]
    deleted = await handlers.delete_ca(pool, actor, added.id)
    assert deleted.id == added.id
    assert await attestation_cas.list_cas(pool, actor.id, registration_id) == []
    assert added.certificate not in await attestation_cas.verified_ca_ders(pool)


async def test_another_account_never_sees_or_changes_a_ca(pool: Pool) -> None:
    actor, registration_id = await _x509(pool)
    added = await handlers.add_ca(pool, actor, registration_id, {"certificate": certs.ca().pem})
    stranger, theirs = await _x509(pool)
    for call in (
        handlers.get_ca(pool, stranger, added.id),
        handlers.delete_ca(pool, stranger, added.id),
        handlers.revoke_serial(pool, stranger, added.id, {"serial": "01"}),
        handlers.verify_ca(pool, stranger, added.id, {"verification_certificate": certs.ca().pem}),
        handlers.list_cas(pool, stranger, registration_id),
        handlers.add_ca(pool, stranger, registration_id, {"certificate": certs.ca().pem}),
    ):
        with pytest.raises(NotFound):
            await call
    assert await attestation_cas.list_cas(pool, stranger.id) == []
    assert await handlers.list_cas(pool, stranger, theirs) == []


async def test_what_a_ca_upload_refuses(pool: Pool) -> None:
    actor, registration_id = await _x509(pool)
    for body, rule in (
        ({"certificate": certs.device(certs.ca()).pem}, "ca=true"),
        ({"certificate": "garbage"}, "malformed"),
        ({"certificate": "A" * 1_048_576}, "too_large"),
        ({}, "required"),
        ({"certificate": certs.ca().pem, "key": "x"}, "known_fields"),
    ):
        with pytest.raises(InvalidInput) as caught:
            await handlers.add_ca(pool, actor, registration_id, body)
        assert caught.value.rule == rule
    code_actor, code_registration = await _x509(pool, attestation="code")
    with pytest.raises(Conflict) as conflict:
        await handlers.add_ca(pool, code_actor, code_registration, {"certificate": certs.ca().pem})
    assert conflict.value.rule == "attestation=x509"
    with pytest.raises(NotFound):
        await handlers.add_ca(pool, actor, str(uuid.uuid4()), {"certificate": certs.ca().pem})


async def test_at_most_so_many_cas_per_registration(pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attestation_cas, "MAX_CAS_PER_REGISTRATION", 2)
    actor, registration_id = await _x509(pool)
    for _ in range(2):
        await handlers.add_ca(pool, actor, registration_id, {"certificate": certs.ca().pem})
    with pytest.raises(Conflict, match="at most 2"):
        await handlers.add_ca(pool, actor, registration_id, {"certificate": certs.ca().pem})
