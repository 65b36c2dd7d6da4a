"""Device certificates from a CSR: the checks a PKCS#10 request must pass, the profile of
the certificate an account's issuing CA signs for a device, the CA itself, its CRL and
the PKCS#7 "certs-only" container EST answers with (docs/device-identity.md, "Device
certificates"). Pure: the registry keeps what these build (shared/db/certificates.py).

A self-made issuing CA's key is P-256 (an intermediate the operator uploads may be RSA
2048-4096 too: shared/domain/uploaded_ca.py), ECDSA with SHA-256: a signature costs tens of
microseconds where RSA-2048 costs about a millisecond, so certificates are issued at the
registration rate on one core; certificates and CRLs stay small; and every TLS stack a
device carries (OpenSSL, mbedTLS, wolfSSL) and the common secure elements verify it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.domain.webhooks import SecretBox
from shared.errors import InvalidInput

# The SecretBox purpose of the issuing CAs' private keys (its own derived AES key).
ISSUING_CA_KEYS = b"fleetreg issuing CA keys"
# A CSR's DER encoding is at most this long (a P-256 request is about 250 bytes, an
# RSA-4096 one about 1,100): a request padded with extensions is refused before parsing.
CSR_MAX_DER_BYTES = 4096
# Its text (PEM, or base64 DER with line breaks) at most this many characters.
CSR_MAX_TEXT_CHARS = 6144
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 4096  # bounds the work of checking a request's signature
# FLEETREG_DEVICE_CERT_DAYS: default and bounds (the CA lives CA_DAYS).
DEVICE_CERT_DAYS_DEFAULT = 365
DEVICE_CERT_DAYS_MIN = 1
DEVICE_CERT_DAYS_MAX = 3650
# FLEETREG_MAX_CERTIFICATES_PER_DEVICE: unexpired certificates (revoked or not) one device
# may hold; default and bounds (at least 2: a renewal needs room beside the current one).
MAX_CERTIFICATES_PER_DEVICE_DEFAULT = 10
MAX_CERTIFICATES_PER_DEVICE_MIN = 2
MAX_CERTIFICATES_PER_DEVICE_MAX = 1000
CA_DAYS = 20 * 365
# A certificate is valid from a few minutes before it is issued: a device whose clock is a
# little behind the server's can use it at once.
BACKDATE = timedelta(minutes=5)
# How long a relying party may keep a CRL (its nextUpdate). The CRL itself is rebuilt
# from the registry whenever a revocation is announced (services/intake/certificates.py).
CRL_VALIDITY = timedelta(hours=1)
# The hardware ID in the subject alternative name (every certificate), and the common
# name when it fits (RFC 5280's upper bound: 64 characters; an assigned clone ID of a
# 64-character stem is longer: its CN is then the device ID).
HARDWARE_ID_URN = "urn:fleetreg:hardware-id:"
CN_MAX = 64

CsrRefusal = Literal["too_large", "malformed", "bad_signature", "weak_key", "unsupported_key"]
RevocationReason = Literal["disabled", "reset", "deleted"]  # a move is a reset
_CRL_REASONS: dict[str, x509.ReasonFlags] = {
    "disabled": x509.ReasonFlags.privilege_withdrawn,
    "reset": x509.ReasonFlags.superseded,
    "deleted": x509.ReasonFlags.cessation_of_operation,
}


class CsrRefused(InvalidInput):
    """A CSR fleetreg does not sign (400): ``reason`` is one of :data:`CsrRefusal` (the
    metric's label and the answer's ``rule``)."""

    code = "csr_refused"

    def __init__(self, reason: CsrRefusal, message: str) -> None:
        super().__init__(message, field="csr", rule=reason)
        self.reason: CsrRefusal = reason


CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class IssuingCa:
    """An account's issuing CA: its certificate (self-signed, or an intermediate the
    operator uploaded), its private key (P-256; RSA only when uploaded), the certificates
    above it the operator gave (``chain``, DER, each signing the one before) and when it was
    uploaded (None: self-made)."""

    account_id: str
    certificate: x509.Certificate
    key: CaKey
    chain: tuple[bytes, ...] = ()
    uploaded_at: datetime | None = None

    # Encoded once per CA (an intake keeps its CAs for its lifetime): every certificate
    # answer carries the CA's PEM, and every device certificate its key identifier.
    @cached_property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @cached_property
    def ders(self) -> tuple[bytes, ...]:
        """The CA's certificate then its chain (DER): what EST ``cacerts`` answers."""
        return (self.der, *self.chain)

    @cached_property
    def not_after(self) -> datetime:
        """When the first certificate of the CA's path expires (its own, or one of its chain
        that expires before it): no certificate it signs verifies past it."""
        return min(
            (
                self.certificate.not_valid_after_utc,
                *(x509.load_der_x509_certificate(d).not_valid_after_utc for d in self.chain),
            )
        )

    @cached_property
    def pem(self) -> str:
        """The CA's certificate then its chain, PEM."""
        return "".join(
            x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM).decode("ascii")
            for d in self.ders
        )

    @cached_property
    def authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        """What names this CA in what it signs: its subjectKeyIdentifier if it has one (an
        uploaded intermediate may not), otherwise RFC 5280 4.2.1.2 method 1 over its key."""
        try:
            ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


@dataclass(frozen=True)
class DeviceCertificate:
    """A certificate issued to a device: its serial (lower-case hex), validity, the SHA-256
    of its public key (SubjectPublicKeyInfo DER) and its DER encoding."""

    serial: str
    not_before: datetime
    not_after: datetime
    public_key_sha256: bytes
    der: bytes

    @property
    def pem(self) -> str:
        return (
            x509.load_der_x509_certificate(self.der).public_bytes(serialization.Encoding.PEM).decode("ascii")
        )


def new_issuing_ca(account_id: str, now: datetime | None = None) -> IssuingCa:
    """A new issuing CA for ``account_id``: a P-256 key and a self-signed certificate valid
    CA_DAYS, naming the account (CN ``fleetreg devices <account ID>``), path length 0 (it
    signs device certificates only)."""
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fleetreg devices {account_id}")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return IssuingCa(account_id, certificate, key)


def seal_ca_key(secret_key: bytes, ca: IssuingCa) -> bytes:
    """The CA's private key (PKCS#8) sealed with FLEETREG_SECRET_KEY, bound to its account."""
    pem = ca.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return SecretBox(secret_key, ISSUING_CA_KEYS).seal(ca.account_id, pem)


def open_issuing_ca(
    secret_key: bytes,
    account_id: str,
    certificate_der: bytes,
    sealed_key: bytes,
    chain: tuple[bytes, ...] = (),
    uploaded_at: datetime | None = None,
) -> IssuingCa:
    """The stored CA with its key unsealed; ValueError when FLEETREG_SECRET_KEY is not the
    one it was sealed with (or the row was copied to another account)."""
    pem = SecretBox(secret_key, ISSUING_CA_KEYS).open(account_id, sealed_key)
    key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("the issuing CA's key is neither EC nor RSA")
    return IssuingCa(account_id, x509.load_der_x509_certificate(certificate_der), key, chain, uploaded_at)


def decode_csr_text(text: str) -> bytes:
    """A CSR's DER from its text: PEM (``-----BEGIN CERTIFICATE REQUEST-----``, what
    ``openssl req`` prints) or base64 DER (RFC 7030's ``application/pkcs10`` body; line
    breaks allowed). CsrRefused ``too_large`` or ``malformed``."""
    if len(text) > CSR_MAX_TEXT_CHARS:
        raise CsrRefused("too_large", f"the CSR is longer than {CSR_MAX_TEXT_CHARS} characters")
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        lines = stripped.splitlines()
        if not lines[-1].startswith("-----END"):
            raise CsrRefused("malformed", "the CSR's PEM has no END line")
        body = "".join(line.strip() for line in lines[1:-1])
    else:
        body = "".join(stripped.split())
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CsrRefused("malformed", "the CSR is neither PEM nor base64 DER") from exc
    if not der:
        raise CsrRefused("malformed", "the CSR is empty")
    return der


def checked_csr(der: bytes) -> x509.CertificateSigningRequest:
    """A PKCS#10 request fleetreg signs: at most CSR_MAX_DER_BYTES, well formed, its key
    P-256 or RSA of RSA_MIN_BITS..RSA_MAX_BITS bits, its signature (the proof that the
    sender holds the key) valid with SHA-256 or stronger. Its subject and extensions are
    read by no one: the certificate's are fleetreg's. CsrRefused with the reason."""
    if len(der) > CSR_MAX_DER_BYTES:
        raise CsrRefused("too_large", f"the CSR is larger than {CSR_MAX_DER_BYTES} bytes (DER)")
    try:
        csr = x509.load_der_x509_csr(der)
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrRefused("malformed", "the CSR is not a well-formed PKCS#10 request") from exc
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            weak = key.curve.key_size < 256
            raise CsrRefused(
                "weak_key" if weak else "unsupported_key",
                f"the CSR's key is on {key.curve.name}: only P-256 (secp256r1) or RSA 2048-4096",
            )
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < RSA_MIN_BITS:
            raise CsrRefused(
                "weak_key", f"the CSR's RSA key has {key.key_size} bits: at least {RSA_MIN_BITS}"
            )
        if key.key_size > RSA_MAX_BITS:
            raise CsrRefused("unsupported_key", f"the CSR's RSA key has more than {RSA_MAX_BITS} bits")
    else:
        raise CsrRefused("unsupported_key", "the CSR's key must be P-256 (secp256r1) or RSA 2048-4096")
    try:
        algorithm = csr.signature_hash_algorithm
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrRefused("bad_signature", "the CSR's signature algorithm is not supported") from exc
    if not isinstance(algorithm, hashes.SHA256 | hashes.SHA384 | hashes.SHA512):
        raise CsrRefused("bad_signature", "the CSR must be signed with SHA-256, SHA-384 or SHA-512")
    if not valid:
        raise CsrRefused("bad_signature", "the CSR's signature does not verify with its key")
    return csr


def parse_csr(text: str) -> x509.CertificateSigningRequest:
    """:func:`decode_csr_text` then :func:`checked_csr`."""
    return checked_csr(decode_csr_text(text))


def public_key_sha256(csr: x509.CertificateSigningRequest | x509.Certificate) -> bytes:
    """SHA-256 of the SubjectPublicKeyInfo (DER): the key a renewal by the current
    certificate's key is matched by."""
    spki = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


# The extensions every device certificate carries, whatever the device (immutable: built
# once, not per certificate).
_NOT_A_CA = x509.BasicConstraints(ca=False, path_length=None)
_DEVICE_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_CLIENT_AUTH = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])


def device_certificate(
    ca: IssuingCa,
    csr: x509.CertificateSigningRequest,
    hardware_id: str,
    device_id: str,
    days: int,
    now: datetime | None = None,
) -> DeviceCertificate:
    """The certificate of the device's key (the CSR's, checked by :func:`checked_csr`):
    subject CN the ASSIGNED ``hardware_id`` (``H-N`` for a clone; never the CSR's subject),
    the hardware ID also as SAN URI ``urn:fleetreg:hardware-id:<ID>``, valid from
    BACKDATE before ``now`` for ``days`` (never past the CA nor its chain:
    ``ca.not_after``), key usage digitalSignature, extended key usage clientAuth, not a CA,
    a random 159-bit serial."""
    now = now or datetime.now(UTC)
    common_name = hardware_id if len(hardware_id) <= CN_MAX else device_id
    not_after = min(now + timedelta(days=days), ca.not_after)
    key = csr.public_key()  # decoded once: each call decodes the CSR's key anew
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(_NOT_A_CA, critical=True)
        .add_extension(_DEVICE_KEY_USAGE, critical=True)
        .add_extension(_CLIENT_AUTH, critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(HARDWARE_ID_URN + hardware_id)]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(ca.authority_key_identifier, critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return DeviceCertificate(
        serial=format(certificate.serial_number, "x"),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        public_key_sha256=hashlib.sha256(spki).digest(),
        der=certificate.public_bytes(serialization.Encoding.DER),
    )


@dataclass(frozen=True)
class Revoked:
    """A revoked certificate as the CRL lists it."""

    serial: str
    revoked_at: datetime
    reason: str


def certificate_revocation_list(ca: IssuingCa, revoked: list[Revoked], now: datetime | None = None) -> bytes:
    """The account's CRL (DER), signed by its CA: every revoked certificate not yet
    expired, with its reason (disabled: privilegeWithdrawn, reset: superseded, deleted:
    cessationOfOperation); thisUpdate ``now``, nextUpdate
    CRL_VALIDITY later; the CRL number is the build time in milliseconds (increasing
    across instances)."""
    now = now or datetime.now(UTC)
    entries = []
    for entry in revoked:
        item = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(entry.serial, 16))
            .revocation_date(entry.revoked_at)
        )
        if entry.reason in _CRL_REASONS:
            item = item.add_extension(x509.CRLReason(_CRL_REASONS[entry.reason]), critical=False)
        entries.append(item.build())
    # The entries go in at once: add_revoked_certificate copies the list on every call
    # (quadratic: 20,000 entries took 1.7 s, on the intake's event loop).
    builder = (
        x509.CertificateRevocationListBuilder(revoked_certificates=entries)
        .issuer_name(ca.certificate.subject)
        .last_update(now)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(int(time.time() * 1000)), critical=False)
        .add_extension(ca.authority_key_identifier, critical=False)
    )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def certs_only(*certificates_der: bytes) -> bytes:
    """RFC 7030's answer body (``application/pkcs7-mime; smime-type=certs-only``): a
    degenerate PKCS#7 SignedData holding the certificates, DER, base64 with line breaks
    (RFC 7030 section 4.1.3: Content-Transfer-Encoding base64)."""
    der = pkcs7.serialize_certificates(
        [x509.load_der_x509_certificate(c) for c in certificates_der], serialization.Encoding.DER
    )
    return base64.encodebytes(der)
