"""Certificates for the X.509 attestation tests, made with ``cryptography`` as a maker's
factory would: a CA (root or intermediate), device certificates (every field a test
varies), the verification certificate of a CA's code, and CRLs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def key_pem(self) -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def ca(
    cn: str = "Maker Root CA",
    *,
    issuer: Issued | None = None,
    ca_flag: bool = True,
    cert_sign: bool = True,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A CA: self-signed (a root) or, with ``issuer``, an intermediate it signs."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.certificate.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(not_after or NOW + 3650 * DAY)
        .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, cert_sign, True, False, False), critical=True
        )
    )
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def device(
    issuer: Issued | None,
    cn: str | None = "dev-0001",
    *,
    serial: int | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    ca_flag: bool | None = None,
    digital_signature: bool | None = True,
    client_auth: bool | None = True,
    dns: str | None = None,
    uri: str | None = None,
) -> Issued:
    """A device certificate signed by ``issuer`` (None: self-signed). ``None`` for an
    extension's flag leaves the extension out."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(cn) if cn is not None else x509.Name([])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before or NOW - DAY)
        .not_valid_after(not_after or NOW + 365 * DAY)
    )
    if ca_flag is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
    if digital_signature is not None:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature, False, True, False, False, False, False, False, False),
            critical=True,
        )
    if client_auth is not None:
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [ExtendedKeyUsageOID.SERVER_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    names: list[x509.GeneralName] = []
    if dns:
        names.append(x509.DNSName(dns))
    if uri:
        names.append(x509.UniformResourceIdentifier(uri))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def verification(issuer: Issued, code: str) -> Issued:
    """The proof of possession: a certificate of subject CN ``code`` signed by ``issuer``'s
    key (what ``openssl x509 -req -CA ca.pem -CAkey ca.key`` makes)."""
    return device(issuer, code, digital_signature=None, client_auth=None)


def crl(issuer: Issued, serials: list[int], *, signer: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """A DER CRL of ``issuer`` revoking ``serials`` (signed by ``signer``, the issuer's key
    by default)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(NOW - DAY)
        .next_update(NOW + DAY)
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - DAY).build()
        )
    return builder.sign(signer or issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def crl_of(ca_pem: Path, ca_key: Path, serials: list[int]) -> bytes:
    """A DER CRL of the CA in files (what ``openssl ca -gencrl`` would make), for a CA the
    documented openssl made."""
    certificate = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    key = serialization.load_pem_private_key(ca_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return crl(Issued(certificate, key), serials)
