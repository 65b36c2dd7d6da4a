"""X.509 attestation's pure rules (shared/domain/x509_attestation.py): what a CA upload
takes, the proof of possession, CRLs, and every reason a device certificate is refused."""

from __future__ import annotations

from datetime import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from shared.domain import x509_attestation as xa
from shared.domain.x509_attestation import HardwareIdFrom, Refusal, TrustedCa
from shared.errors import InvalidInput
from tests.support import x509 as certs

NOW = certs.NOW
ROOT = certs.ca("Maker Root CA")
INTERMEDIATE = certs.ca("Maker Line 3 CA", issuer=ROOT)
OTHER = certs.ca("Maker Root CA")  # the same name, another key: a forger's CA


def trusted(
    *issued: certs.Issued, verified: bool = True, serials: frozenset[int] = frozenset(), crl: bytes = b""
) -> list[TrustedCa]:
    return [
        TrustedCa(
            f"ca-{i}",
            c.certificate,
            verified,
            serials,
            xa.crl_serials(xa.parse_crl(crl, c.certificate)) if crl else frozenset(),
        )
        for i, c in enumerate(issued)
    ]


def verify(
    leaf: certs.Issued,
    cas: list[TrustedCa],
    chain: tuple[certs.Issued, ...] = (),
    *,
    now: datetime = NOW,
    hardware_id_from: HardwareIdFrom = "cn",
) -> str | Refusal:
    return xa.verify_device_certificate(
        leaf.certificate, [c.certificate for c in chain], cas, now, hardware_id_from
    )


def rule(result: str | Refusal) -> str:
    assert isinstance(result, Refusal), result
    assert "," not in result.reason and '"' not in result.reason  # plain text for every client
    return result.rule


def test_a_device_certificate_of_a_verified_ca_attests_its_cn() -> None:
    assert verify(certs.device(ROOT, "b827eb8905e5"), trusted(ROOT)) == "b827eb8905e5"


def test_through_an_intermediate_uploaded_or_presented() -> None:
    leaf = certs.device(INTERMEDIATE, "dev-7")
    assert verify(leaf, trusted(INTERMEDIATE)) == "dev-7"
    assert verify(leaf, trusted(ROOT), (INTERMEDIATE,)) == "dev-7"
    assert rule(verify(leaf, trusted(ROOT))) == "unknown_issuer"  # the intermediate not presented


def test_every_refusal_has_its_own_rule() -> None:
    cas = trusted(ROOT)
    cases = {
        "expired": certs.device(ROOT, not_before=NOW - 9 * certs.DAY, not_after=NOW - certs.DAY),
        "not_yet_valid": certs.device(ROOT, not_before=NOW + certs.DAY),
        "unknown_issuer": certs.device(OTHER),
        "self_signed": certs.device(None, "dev-1"),
        "ca_certificate": certs.device(ROOT, ca_flag=True),
        "key_usage": certs.device(ROOT, digital_signature=False),
        "extended_key_usage": certs.device(ROOT, client_auth=False),
        "no_hardware_id": certs.device(ROOT, cn=None),
    }
    for expected, leaf in cases.items():
        assert rule(verify(leaf, cas)) == expected, expected


def test_the_ca_itself_or_an_intermediate_is_no_device() -> None:
    assert rule(verify(ROOT, trusted(ROOT))) == "self_signed"
    assert rule(verify(INTERMEDIATE, trusted(ROOT))) == "ca_certificate"


def test_absent_usage_extensions_are_allowed_present_ones_must_fit() -> None:
    assert verify(certs.device(ROOT, "d1", digital_signature=None, client_auth=None), trusted(ROOT)) == "d1"
    assert verify(certs.device(ROOT, "d2", ca_flag=False), trusted(ROOT)) == "d2"


def test_an_unverified_ca_trusts_nothing() -> None:
    assert rule(verify(certs.device(ROOT), trusted(ROOT, verified=False))) == "ca_not_verified"


def test_another_registrations_ca_is_not_looked_at() -> None:
    assert rule(verify(certs.device(ROOT), trusted(OTHER))) == "unknown_issuer"
    assert rule(verify(certs.device(ROOT), [])) == "unknown_issuer"


def test_revoked_by_listed_serial_by_crl_and_by_revoked_intermediate() -> None:
    leaf = certs.device(ROOT, serial=0xABCDEF)
    assert rule(verify(leaf, trusted(ROOT, serials=frozenset({0xABCDEF})))) == "revoked"
    assert rule(verify(leaf, trusted(ROOT, crl=certs.crl(ROOT, [0xABCDEF])))) == "revoked"
    assert verify(leaf, trusted(ROOT, crl=certs.crl(ROOT, [1, 2]))) == "dev-0001"
    below = certs.device(INTERMEDIATE, "d9")
    revoked = trusted(ROOT, serials=frozenset({INTERMEDIATE.certificate.serial_number}))
    assert rule(verify(below, revoked, (INTERMEDIATE,))) == "revoked"


def test_an_expired_intermediate_or_ca_refuses() -> None:
    old = certs.ca("Old line CA", issuer=ROOT, not_after=NOW - certs.DAY)
    leaf = certs.device(old, not_before=NOW - 9 * certs.DAY)
    assert rule(verify(leaf, trusted(ROOT), (old,))) == "expired"
    assert rule(verify(certs.device(ROOT), trusted(ROOT), now=NOW + 4000 * certs.DAY)) == "expired"


def test_a_presented_non_ca_is_no_intermediate() -> None:
    fake = certs.device(ROOT, "Maker Line 3 CA")  # a device certificate named like a CA
    leaf = certs.device(certs.Issued(fake.certificate, fake.key), "d3")
    assert rule(verify(leaf, trusted(ROOT), (fake,))) == "unknown_issuer"


def test_the_hardware_id_from_a_san() -> None:
    leaf = certs.device(ROOT, "ignored cn", dns="dev-dns-1", uri="urn:fleetreg:hardware-id:dev-uri-1")
    assert verify(leaf, trusted(ROOT), hardware_id_from="san:dns") == "dev-dns-1"
    assert verify(leaf, trusted(ROOT), hardware_id_from="san:uri") == "dev-uri-1"
    web = certs.device(ROOT, uri="https://maker.example/devices/B827EB")
    assert verify(web, trusted(ROOT), hardware_id_from="san:uri") == "B827EB"
    assert rule(verify(certs.device(ROOT), trusted(ROOT), hardware_id_from="san:dns")) == "no_hardware_id"
    assert rule(verify(certs.device(ROOT, "has space"), trusted(ROOT))) == "no_hardware_id"


def test_a_ca_upload_needs_ca_true_keycertsign_a_sound_key_and_validity() -> None:
    xa.check_ca_certificate(ROOT.certificate, NOW)
    xa.check_ca_certificate(INTERMEDIATE.certificate, NOW)
    for issued, expected in (
        (certs.device(ROOT), "ca=true"),
        (certs.ca("no flag", ca_flag=False), "ca=true"),
        (certs.ca("no sign", cert_sign=False), "key_usage=keyCertSign"),
        (certs.ca("old", not_after=NOW - certs.DAY), "expired"),
    ):
        with pytest.raises(InvalidInput) as caught:
            xa.check_ca_certificate(issued.certificate, NOW)
        assert caught.value.rule == expected and caught.value.field == "certificate"


def test_a_weak_rsa_ca_is_refused() -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(65537, 1024)  # noqa: S505 - the weak key under test
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak")])
    weak = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - certs.DAY)
        .not_valid_after(NOW + certs.DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(InvalidInput, match="RSA 2048"):
        xa.check_ca_certificate(weak, NOW)


def test_parsing_is_bounded_and_refuses_garbage() -> None:
    assert xa.parse_certificate(ROOT.pem).serial_number == ROOT.certificate.serial_number
    der = ROOT.certificate.public_bytes(serialization.Encoding.DER)
    import base64

    assert xa.parse_certificate(base64.b64encode(der).decode()) == ROOT.certificate
    for text, expected in (
        ("garbage", "malformed"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "malformed"),
        (ROOT.pem + INTERMEDIATE.pem, "malformed"),
        ("A" * 1_048_576, "too_large"),
        ("", "malformed"),
    ):
        with pytest.raises(InvalidInput) as caught:
            xa.parse_certificate(text)
        assert caught.value.rule == expected, text[:40]
    assert len(xa.parse_certificates(ROOT.pem + INTERMEDIATE.pem, "chain", at_most=4)) == 2


def test_the_verification_certificate_proves_the_cas_key() -> None:
    assert xa.fingerprint(ROOT.certificate) != xa.fingerprint(OTHER.certificate)
    code = xa.new_verification_code()
    assert len(code) == 32 and code != xa.new_verification_code()
    xa.check_verification_certificate(ROOT.certificate, certs.verification(ROOT, code).certificate, code)
    for made, expected in (
        (certs.verification(ROOT, "another code"), "cn=verification_code"),
        (certs.verification(OTHER, code), "signed_by_ca"),  # same issuer name, forged key
        (certs.device(None, code), "signed_by_ca"),  # self-signed with the code
    ):
        with pytest.raises(InvalidInput) as caught:
            xa.check_verification_certificate(ROOT.certificate, made.certificate, code)
        assert caught.value.rule == expected


def test_a_crl_must_be_the_cas_own() -> None:
    good = certs.crl(ROOT, [5])
    assert xa.parse_crl(good, ROOT.certificate).get_revoked_certificate_by_serial_number(5) is not None
    pem = b"-----BEGIN X509 CRL-----\n" + __import__("base64").encodebytes(good) + b"-----END X509 CRL-----\n"
    assert xa.parse_crl(pem, ROOT.certificate) is not None
    for data, expected in (
        (certs.crl(ROOT, [5], signer=OTHER.key), "signature"),
        (certs.crl(INTERMEDIATE, [5]), "issuer"),
        (b"garbage", "malformed"),
        (b"0" * (xa.MAX_CRL_BYTES + 1), "too_large"),
    ):
        with pytest.raises(InvalidInput) as caught:
            xa.parse_crl(data, ROOT.certificate)
        assert caught.value.rule == expected and caught.value.field == "crl"


def test_verification_keeps_up_with_a_boot_storm() -> None:
    """One signature check per certificate of the path dominates: over 1,000 verifications a
    second on one core even with 20 CAs and a 10,000-entry CRL (measured about 3,700/s;
    docs/device-identity.md), a CRL's lookup a set's, not a scan of the CRL."""
    import time

    serials = xa.crl_serials(xa.parse_crl(certs.crl(ROOT, list(range(1, 10_001))), ROOT.certificate))
    cas = [TrustedCa("root", ROOT.certificate, True, crl_serials=serials)]
    cas += [TrustedCa(f"other-{i}", OTHER.certificate, True) for i in range(19)]
    leaf = certs.device(ROOT, "dev-rate")
    count, started = 300, time.perf_counter()
    for _ in range(count):
        assert xa.verify_device_certificate(leaf.certificate, [], cas, NOW) == "dev-rate"
    assert count / (time.perf_counter() - started) > 1_000


def _intermediate(
    issuer: certs.Issued, *, path_length: int | None = None, cert_sign: bool = True
) -> certs.Issued:
    """A CA=true intermediate ``issuer`` signs, with the given pathLenConstraint and keyUsage."""
    key = ec.generate_private_key(ec.SECP256R1())
    built = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Line CA {path_length}")]))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - certs.DAY)
        .not_valid_after(NOW + 30 * certs.DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, cert_sign, True, False, False), True)
        .sign(issuer.key, hashes.SHA256())
    )
    return certs.Issued(built, key)


def test_a_presented_intermediate_must_be_allowed_to_sign_and_that_deep() -> None:
    """RFC 5280 4.2.1.3 and 4.2.1.9, as the https listener's handshake already enforces."""
    no_sign = _intermediate(ROOT, cert_sign=False)
    assert rule(verify(certs.device(no_sign, "d1"), trusted(ROOT), (no_sign,))) == "unknown_issuer"
    zero = _intermediate(ROOT, path_length=0)
    below = _intermediate(zero)
    assert verify(certs.device(zero, "d2"), trusted(ROOT), (zero,)) == "d2"
    assert rule(verify(certs.device(below, "d3"), trusted(ROOT), (below, zero))) == "unknown_issuer"


def test_an_unprocessed_critical_extension_refuses() -> None:
    """RFC 5280 4.2: a critical extension the verifier does not process rejects the certificate."""
    plain = certs.device(ROOT, "d4")
    builder = (
        x509.CertificateBuilder()
        .subject_name(plain.certificate.subject)
        .issuer_name(ROOT.certificate.subject)
        .public_key(plain.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - certs.DAY)
        .not_valid_after(NOW + 30 * certs.DAY)
    )
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    leaf = certs.Issued(builder.add_extension(odd, critical=True).sign(ROOT.key, hashes.SHA256()), plain.key)
    assert rule(verify(leaf, trusted(ROOT))) == "malformed"
    assert verify(plain, trusted(ROOT)) == "d4"
