"""An uploaded issuing CA (shared/domain/uploaded_ca.py): what is refused (400 naming the
field and the rule, never quoting the key), and what a device certificate and a CRL look
like when it signs them (issuer its subject, AKI from its key, the chain in cacerts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from shared.domain.certificates import (
    Revoked,
    certificate_revocation_list,
    device_certificate,
    new_issuing_ca,
    open_issuing_ca,
    seal_ca_key,
)
from shared.domain.uploaded_ca import MAX_TEXT_CHARS, checked_upload
from shared.errors import InvalidInput
from tests.support.pki import certificate, hostile_uploads, key_pem, new_pki, pem, usage

ACCOUNT = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
SECRET = b"k" * 32


def refused(body: dict[str, Any]) -> tuple[str | None, str | None, str]:
    with pytest.raises(InvalidInput) as caught:
        checked_upload(body)
    return caught.value.field, caught.value.rule, caught.value.message


def test_a_valid_intermediate_with_its_root_is_accepted_in_both_key_formats() -> None:
    pki = new_pki()
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        upload = checked_upload(
            {"certificate": pem(pki.intermediate, pki.root), "private_key": key_pem(pki.key, fmt)}
        )
        assert upload.certificate == pki.intermediate
        assert upload.chain == (pki.root.public_bytes(serialization.Encoding.DER),)
    # The intermediate alone (the root is the relying parties' business) is enough.
    assert checked_upload({"certificate": pem(pki.intermediate), "private_key": key_pem(pki.key)}).chain == ()


def test_each_refusal_names_its_field_and_rule_and_never_the_key() -> None:
    pki = new_pki()
    good_cert, good_key = pem(pki.intermediate, pki.root), key_pem(pki.key)
    other = ec.generate_private_key(ec.SECP256R1())
    leaf = certificate("leaf", other, pki.root, pki.root_key, ca=False)
    no_crl = new_pki(key_usage=usage(crl_sign=False))
    later = new_pki(not_before=datetime.now(UTC) + timedelta(days=1))
    short = new_pki(days=0)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (refused: the point)
    weak_ca = certificate("weak", weak, pki.root, pki.root_key)
    p384 = ec.generate_private_key(ec.SECP384R1())
    p384_ca = certificate("p384", p384, pki.root, pki.root_key)
    stranger = new_pki("Stranger")
    posing = new_pki("fleetreg devices 0f1e2d3c")
    encrypted = pki.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"private_key": good_key}, "certificate", "required"),
        ({"certificate": good_cert, "private_key": 5}, "private_key", "required"),
        (
            {"certificate": "x" * (MAX_TEXT_CHARS + 1), "private_key": good_key},
            "certificate",
            f"max_length={MAX_TEXT_CHARS}",
        ),
        ({"certificate": "garbage", "private_key": good_key}, "certificate", "malformed"),
        ({"certificate": good_cert, "private_key": "garbage"}, "private_key", "malformed"),
        ({"certificate": good_cert, "private_key": encrypted}, "private_key", "encrypted"),
        ({"certificate": pem(leaf), "private_key": key_pem(other)}, "certificate", "ca"),
        (
            {"certificate": pem(no_crl.intermediate), "private_key": key_pem(no_crl.key)},
            "certificate",
            "key_usage",
        ),
        (
            {"certificate": pem(later.intermediate), "private_key": key_pem(later.key)},
            "certificate",
            "not_yet_valid",
        ),
        (
            {"certificate": pem(posing.intermediate), "private_key": key_pem(posing.key)},
            "certificate",
            "reserved_subject",
        ),
        (
            {"certificate": pem(short.intermediate), "private_key": key_pem(short.key)},
            "certificate",
            "expired",
        ),
        ({"certificate": pem(weak_ca), "private_key": key_pem(weak)}, "certificate", "key_type"),
        ({"certificate": pem(p384_ca), "private_key": key_pem(p384)}, "certificate", "key_type"),
        ({"certificate": good_cert, "private_key": key_pem(other)}, "private_key", "key_mismatch"),
        (
            {"certificate": pem(pki.intermediate, stranger.root), "private_key": good_key},
            "certificate",
            "chain",
        ),
        ({**pki.body(), "password": "x"}, "password", None),
    ]
    for body, field, rule in cases:
        got_field, got_rule, message = refused(body)
        assert (got_field, got_rule if rule else None) == (field, rule), (field, rule, message)
        for line in good_key.splitlines()[1:-1]:
            assert line not in message


def test_an_uploaded_ca_signs_device_certificates_and_crls_named_by_its_key() -> None:
    pki = new_pki(ski=False)  # no subjectKeyIdentifier: the AKI is computed from its key
    upload = checked_upload(pki.body())
    ca = upload.issuing_ca(ACCOUNT, datetime.now(UTC))
    # Sealed and opened as a self-made CA is, its chain and upload time kept beside it.
    reopened = open_issuing_ca(SECRET, ACCOUNT, ca.der, seal_ca_key(SECRET, ca), ca.chain, ca.uploaded_at)
    assert reopened.ders == (pki.intermediate.public_bytes(serialization.Encoding.DER), *upload.chain)
    assert reopened.pem == pem(pki.intermediate, pki.root)
    device_key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(device_key, hashes.SHA256())
    )
    issued = x509.load_der_x509_certificate(device_certificate(reopened, csr, "H1", "d", 365).der)
    assert issued.issuer == pki.intermediate.subject
    issued.verify_directly_issued_by(pki.intermediate)
    aki = issued.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki == x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.key.public_key())
    crl = x509.load_der_x509_crl(
        certificate_revocation_list(
            reopened, [Revoked(format(issued.serial_number, "x"), datetime.now(UTC), "disabled")]
        )
    )
    assert crl.issuer == pki.intermediate.subject and crl.is_signature_valid(pki.intermediate.public_key())


def test_an_rsa_intermediate_signs_too() -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = certificate("Root", root_key, None, root_key)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    intermediate = certificate("RSA Intermediate", key, root, root_key)
    ca = checked_upload({"certificate": pem(intermediate, root), "private_key": key_pem(key)}).issuing_ca(
        ACCOUNT, datetime.now(UTC)
    )
    reopened = open_issuing_ca(SECRET, ACCOUNT, ca.der, seal_ca_key(SECRET, ca), ca.chain, ca.uploaded_at)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    issued = x509.load_der_x509_certificate(device_certificate(reopened, csr, "H2", "d", 30).der)
    issued.verify_directly_issued_by(intermediate)


def test_a_path_relying_parties_would_refuse_is_refused_at_upload() -> None:
    # Each was accepted, and every device certificate it signed then failed at relying
    # parties (or, for the malformed subject, the upload answered 500; for the RSA key,
    # OpenSSL tested its primes on the event loop before its size was looked at; for the
    # control characters, the subject reached the CLI's tables and terminals raw).
    for what, body, field, rule in hostile_uploads():
        got_field, got_rule, message = refused(body)
        assert (got_field, got_rule) == (field, rule), (what, message)


def test_device_certificates_never_outlive_a_certificate_of_the_chain() -> None:
    # A root that expires before its intermediate: a certificate valid past the root's end
    # verifies nowhere then (it was clamped to the intermediate only).
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = certificate("Short Root", root_key, None, root_key, days=30)
    intermediate = certificate("Long Intermediate", key, root, root_key, days=3650)
    ca = checked_upload({"certificate": pem(intermediate, root), "private_key": key_pem(key)}).issuing_ca(
        ACCOUNT, datetime.now(UTC)
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    issued = device_certificate(ca, csr, "H3", "d", 365)
    assert issued.not_after == root.not_valid_after_utc
    # A root that expires within a day is refused, as the intermediate would be.
    with pytest.raises(InvalidInput) as caught:
        checked_upload(
            {"certificate": pem(intermediate, root), "private_key": key_pem(key)},
            now=root.not_valid_after_utc - timedelta(hours=12),
        )
    assert caught.value.rule == "chain_validity"
    # A self-made CA (no chain): its own end.
    own = new_issuing_ca(ACCOUNT)
    assert device_certificate(own, csr, "H4", "d", 365).not_after < own.certificate.not_valid_after_utc
    assert own.not_after == own.certificate.not_valid_after_utc
