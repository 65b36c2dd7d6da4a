"""A root and an intermediate as an operator's own PKI makes them (the tests of an uploaded
issuing CA, docs/device-identity.md "Bringing your own intermediate")."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def usage(*, cert_sign: bool = True, crl_sign: bool = True) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def certificate(
    subject: str,
    key: Any,
    issuer: x509.Certificate | None,
    issuer_key: Any,
    *,
    ca: bool = True,
    key_usage: x509.KeyUsage | None = None,
    not_before: datetime | None = None,
    days: int = 3650,
    ski: bool = True,
) -> x509.Certificate:
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after((not_before or now) + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca and issuer else None), critical=True)
        .add_extension(key_usage or usage(), critical=True)
    )
    if ski:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def pem(*certificates: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates)


def key_pem(key: Any, fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> str:
    text: bytes = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    return text.decode()


@dataclass(frozen=True)
class Pki:
    """A root and an intermediate it signed (P-256 both)."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    intermediate: x509.Certificate

    def body(self) -> dict[str, str]:
        """The ``PUT /v1/account/issuing-ca`` body: the intermediate then the root, its key."""
        return {"certificate": pem(self.intermediate, self.root), "private_key": key_pem(self.key)}


def new_pki(name: str = "", **intermediate: Any) -> Pki:
    """A root ``<name> Root`` and its intermediate ``<name> Intermediate``; the name is a
    fresh one by default (two accounts may not upload intermediates of one subject)."""
    name = name or f"Example Devices {uuid.uuid4().hex[:12]}"
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = certificate(f"{name} Root", root_key, None, root_key)
    return Pki(root_key, root, key, certificate(f"{name} Intermediate", key, root, root_key, **intermediate))
