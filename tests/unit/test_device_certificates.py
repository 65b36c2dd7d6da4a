"""The device certificate rules (shared/domain/certificates.py): which CSRs are signed, the
profile of what is issued, the CA's key sealed at rest, the CRL and EST's certs-only body."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.intake.settings import device_cert_days, max_certificates_per_device
from shared.domain.certificates import (
    CsrRefused,
    Revoked,
    certificate_revocation_list,
    certs_only,
    device_certificate,
    new_issuing_ca,
    open_issuing_ca,
    parse_csr,
    seal_ca_key,
)
from shared.settings import Env, SettingsError

ACCOUNT = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
SECRET = b"k" * 32


def csr_pem(key: object, subject: str = "attacker-chosen", extensions: int = 0) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    )
    if extensions:
        names = [x509.DNSName(f"n{i}.example") for i in range(extensions)]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    csr = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]  # any private key the test builds
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_a_p256_csr_gets_the_profile_with_the_assigned_hardware_id_as_subject() -> None:
    ca = new_issuing_ca(ACCOUNT)
    csr = parse_csr(csr_pem(ec.generate_private_key(ec.SECP256R1()), "someone-else"))
    issued = device_certificate(ca, csr, "H-1", "dev", days=30)
    cert = x509.load_der_x509_certificate(issued.der)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "H-1"
    assert cert.issuer == ca.certificate.subject
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert not cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert timedelta(days=29) < cert.not_valid_after_utc - datetime.now(UTC) <= timedelta(days=30)
    cert.verify_directly_issued_by(ca.certificate)
    assert issued.serial == format(cert.serial_number, "x")


def test_rsa_2048_and_base64_der_are_accepted() -> None:
    pem = csr_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    der = x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER)
    assert parse_csr(base64.encodebytes(der).decode()).is_signature_valid


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("garbage", "malformed"),
        ("", "malformed"),
        (base64.b64encode(b"\x30\x03\x02\x01\x00").decode(), "malformed"),
        ("A" * 7000, "too_large"),
    ],
)
def test_garbage_is_refused_with_its_reason(text: str, reason: str) -> None:
    with pytest.raises(CsrRefused) as refused:
        parse_csr(text)
    assert refused.value.reason == reason


def test_weak_and_unsupported_keys_are_refused() -> None:
    weak_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505  # the weak key refused
    for key, reason in (
        (weak_rsa, "weak_key"),
        (ec.generate_private_key(ec.SECP192R1()), "weak_key"),
        (ec.generate_private_key(ec.SECP384R1()), "unsupported_key"),
    ):
        with pytest.raises(CsrRefused) as refused:
            parse_csr(csr_pem(key))
        assert refused.value.reason == reason


def test_a_bad_signature_and_megabyte_extensions_are_refused() -> None:
    der = bytearray(
        x509.load_pem_x509_csr(csr_pem(ec.generate_private_key(ec.SECP256R1())).encode()).public_bytes(
            serialization.Encoding.DER
        )
    )
    der[-3] ^= 0x01  # inside the signature
    with pytest.raises(CsrRefused) as refused:
        parse_csr(base64.b64encode(bytes(der)).decode())
    assert refused.value.reason in ("bad_signature", "malformed")
    with pytest.raises(CsrRefused) as refused:
        parse_csr(csr_pem(ec.generate_private_key(ec.SECP256R1()), extensions=300))
    assert refused.value.reason == "too_large"


def test_the_ca_key_is_sealed_for_its_account_and_secret() -> None:
    ca = new_issuing_ca(ACCOUNT)
    sealed = seal_ca_key(SECRET, ca)
    assert b"PRIVATE KEY" not in sealed
    opened = open_issuing_ca(SECRET, ACCOUNT, ca.der, sealed)
    assert opened.key.private_numbers() == ca.key.private_numbers()
    with pytest.raises(ValueError, match="FLEETREG_SECRET_KEY"):
        open_issuing_ca(b"x" * 32, ACCOUNT, ca.der, sealed)
    with pytest.raises(ValueError, match="FLEETREG_SECRET_KEY"):
        open_issuing_ca(SECRET, "another-account", ca.der, sealed)


def test_the_crl_lists_revoked_serials_signed_by_the_ca() -> None:
    ca = new_issuing_ca(ACCOUNT)
    crl = x509.load_der_x509_crl(
        certificate_revocation_list(ca, [Revoked("abc123", datetime.now(UTC), "disabled")])
    )
    ca_key = ca.certificate.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)  # the issuing CA is P-256
    assert crl.is_signature_valid(ca_key)
    entry = crl.get_revoked_certificate_by_serial_number(0xABC123)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.privilege_withdrawn


def test_the_crl_is_built_in_time_linear_in_its_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The entries go into the builder at once: ``add_revoked_certificate`` copies the list
    on every call, so a CRL that a reclaimed or disabled device filled with thousands of
    revocations took quadratic time on the intake's event loop (40,000 entries: 2.5 s)."""

    def quadratic(*_args: object) -> None:
        raise AssertionError("add_revoked_certificate copies every entry added before")

    monkeypatch.setattr(x509.CertificateRevocationListBuilder, "add_revoked_certificate", quadratic)
    ca = new_issuing_ca(ACCOUNT)
    now = datetime.now(UTC)
    revoked = [Revoked(format(n, "x"), now, reason) for n, reason in ((1, "reset"), (2, "deleted"), (3, "x"))]
    crl = x509.load_der_x509_crl(certificate_revocation_list(ca, revoked))
    assert sorted(entry.serial_number for entry in crl) == [1, 2, 3]
    entry = crl.get_revoked_certificate_by_serial_number(2)
    assert entry is not None
    assert (
        entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        == x509.ReasonFlags.cessation_of_operation
    )


async def test_a_crl_read_across_a_revocation_signal_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A revocation committed after the CRL's read but announced before its build ends
    must not leave the older CRL kept until some later signal: the build now runs in a
    thread (it stalled the event loop), which widened that window to the build's length."""
    from services.intake import certificates as intake_certificates
    from shared.db import certificates as registry

    issuer = intake_certificates.Issuer(SECRET, 365)
    issuer.listening(True)
    issuer._cas[ACCOUNT] = new_issuing_ca(ACCOUNT)
    revoked: list[Revoked] = []
    reads = 0

    async def read(_pool: object, _account_id: str) -> list[Revoked]:
        nonlocal reads
        reads += 1
        snapshot = list(revoked)
        if reads == 1:  # the revocation commits and is announced while this read is in flight
            revoked.append(Revoked("abc123", datetime.now(UTC), "disabled"))
            issuer.invalidate(ACCOUNT)
        return snapshot

    monkeypatch.setattr(registry, "revoked", read)
    first = x509.load_der_x509_crl(await issuer.crl(None, ACCOUNT))  # type: ignore[arg-type]
    assert first.get_revoked_certificate_by_serial_number(0xABC123) is None  # read before it
    second = x509.load_der_x509_crl(await issuer.crl(None, ACCOUNT))  # type: ignore[arg-type]
    assert second.get_revoked_certificate_by_serial_number(0xABC123) is not None
    assert reads == 2
    third = await issuer.crl(None, ACCOUNT)  # type: ignore[arg-type]
    assert reads == 2 and x509.load_der_x509_crl(third).get_revoked_certificate_by_serial_number(0xABC123)


async def test_a_kept_crl_stays_through_other_accounts_signals_until_its_keep_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only ``crl:<this account>`` drops the kept CRL (every account's used to be dropped
    at any device's change: a 5,700-entry CRL rebuilt at each stalled unrelated calls), and
    it is rebuilt past CRL_KEPT_SECONDS anyway: its nextUpdate is an hour after its build,
    and a quiet account's CRL would otherwise be served expired."""
    from services.intake import certificates as intake_certificates
    from shared.db import certificates as registry

    issuer = intake_certificates.Issuer(SECRET, 365)
    issuer.listening(True)
    issuer._cas[ACCOUNT] = new_issuing_ca(ACCOUNT)
    reads = 0
    clock = [1000.0]

    async def read(_pool: object, _account_id: str) -> list[Revoked]:
        nonlocal reads
        reads += 1
        return []

    monkeypatch.setattr(registry, "revoked", read)
    monkeypatch.setattr(intake_certificates.time, "monotonic", lambda: clock[0])
    await issuer.crl(None, ACCOUNT)  # type: ignore[arg-type]
    issuer.apply("device:5b0c2f8e-5f57-4b7e-9b0a-9f1c2d3e4f50")  # a device change: no revocation
    issuer.apply("crl:11111111-2222-4333-8444-555555555555")  # another account's revocation
    clock[0] += intake_certificates.CRL_KEPT_SECONDS - 1
    await issuer.crl(None, ACCOUNT)  # type: ignore[arg-type]
    assert reads == 1
    clock[0] += 2
    built = x509.load_der_x509_crl(await issuer.crl(None, ACCOUNT))  # type: ignore[arg-type]
    assert reads == 2
    assert built.next_update_utc is not None and built.next_update_utc > datetime.now(UTC) + timedelta(
        minutes=55
    )
    issuer.apply(f"crl:{ACCOUNT.upper()}")
    await issuer.crl(None, ACCOUNT)  # type: ignore[arg-type]
    assert reads == 3


def test_certs_only_is_base64_pkcs7() -> None:
    ca = new_issuing_ca(ACCOUNT)
    loaded = pkcs7.load_der_pkcs7_certificates(base64.b64decode(certs_only(ca.der)))
    assert loaded == [ca.certificate]


def test_issuing_is_fast_enough_for_the_registration_rate() -> None:
    ca = new_issuing_ca(ACCOUNT)
    csr = parse_csr(csr_pem(ec.generate_private_key(ec.SECP256R1())))
    started = time.perf_counter()
    for _ in range(200):
        device_certificate(ca, csr, "H", "dev", days=365)
    per_second = 200 / (time.perf_counter() - started)
    assert per_second > 1000, per_second  # the target is 400/s for the whole call


def test_the_certificate_cap_setting_has_its_default_and_bounds() -> None:
    assert max_certificates_per_device(Env({})) == 10
    assert max_certificates_per_device(Env({"FLEETREG_MAX_CERTIFICATES_PER_DEVICE": "50"})) == 50
    for bad in ("1", "1001", "x"):
        with pytest.raises(SettingsError, match="FLEETREG_MAX_CERTIFICATES_PER_DEVICE"):
            max_certificates_per_device(Env({"FLEETREG_MAX_CERTIFICATES_PER_DEVICE": bad}))


def test_the_validity_setting_has_its_default_and_bounds() -> None:
    assert device_cert_days(Env({})) == 365
    assert device_cert_days(Env({"FLEETREG_DEVICE_CERT_DAYS": "30"})) == 30
    for bad in ("0", "3651", "x"):
        with pytest.raises(SettingsError, match="FLEETREG_DEVICE_CERT_DAYS"):
            device_cert_days(Env({"FLEETREG_DEVICE_CERT_DAYS": bad}))
