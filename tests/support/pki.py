"""A root and an intermediate as an operator's own PKI makes them (the tests of an uploaded
issuing CA, docs/device-identity.md "Bringing your own intermediate")."""

from __future__ import annotations

import base64
import math
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


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
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    """A certificate of ``key`` signed by ``issuer_key`` (self-signed when ``issuer`` is
    None; an empty ``subject``: an empty name); ``extensions``: more (extension, critical) pairs."""
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)] if subject else [])
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
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
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


def oversized_rsa_key(bits: int = 8192) -> str:
    """An RSA private key (PEM) of a ``bits`` modulus whose factors are not primes: made at
    once (a real 8192-bit key takes a minute), and what it is refused for must be its size,
    found before OpenSSL tests its primes (tens of seconds for a real one)."""
    while True:
        p, q = (secrets.randbits(bits // 2) | (1 << (bits // 2 - 1)) | 1 for _ in range(2))
        if math.gcd(p, q) == 1:
            break
    # Odd and below the modulus (cryptography checks that much even unvalidated: a random
    # ``bits - 1``-bit exponent was above a ``bits - 1``-bit modulus at times).
    d = secrets.randbelow((p * q - 1) // 2) * 2 + 1
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(65537, p * q)
    )
    return key_pem(numbers.private_key(unsafe_skip_rsa_key_validation=True))


def hostile_uploads() -> list[tuple[str, dict[str, str], str, str]]:
    """Uploads a relying party's path check (or fleetreg's limits) refuses, each as
    (what, ``PUT /v1/account/issuing-ca`` body, the refusal's field, its rule)."""
    pki = new_pki()
    key = ec.generate_private_key(ec.SECP256R1())
    named = certificate("ZZZZ", key, pki.root, pki.root_key)
    # A subject of invalid UTF-8 (its UTF8String's bytes replaced: only a parent would
    # check the signature, and there is none).
    bad_utf8 = named.public_bytes(serialization.Encoding.DER).replace(b"ZZZZ", b"\xff\xfe\xff\xfe")
    bad_utf8_pem = "".join(
        [
            "-----BEGIN CERTIFICATE-----\n",
            base64.encodebytes(bad_utf8).decode(),
            "-----END CERTIFICATE-----\n",
        ]
    )
    constrained = certificate(
        "Constrained",
        key,
        pki.root,
        pki.root_key,
        extensions=[(x509.NameConstraints([x509.DNSName("devices.example.com")], None), True)],
    )
    server_only = certificate(
        "Server Only",
        key,
        pki.root,
        pki.root_key,
        extensions=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)],
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = certificate("Leaf", leaf_key, pki.root, pki.root_key, ca=False)
    under_leaf = certificate("Under A Leaf", key, leaf, leaf_key)
    # pki.intermediate has pathLen 0: no CA may stand below it.
    under_intermediate = certificate("Under Intermediate", key, pki.intermediate, pki.key)
    old_key = ec.generate_private_key(ec.SECP256R1())
    long_ago = datetime.now(UTC) - timedelta(days=100)
    old_root = certificate("Old Root", old_key, None, old_key, not_before=long_ago, days=10)
    of_old_root = certificate("Of An Old Root", key, old_root, old_key)
    posing = certificate("FLEETREG  Devices 0f1e2d3c", key, pki.root, pki.root_key)
    nameless = certificate("", key, pki.root, pki.root_key)
    clearing = certificate("Devices \x1b[2J", key, pki.root, pki.root_key)
    odd_key = ec.generate_private_key(ec.SECP256R1())
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    odd_root = certificate("Odd Root", odd_key, None, odd_key, extensions=[(unknown, True)])
    of_odd_root = certificate("Of An Odd Root", key, odd_root, odd_key)
    mine = key_pem(key)
    return [
        ("a subject of invalid UTF-8", {"certificate": bad_utf8_pem, "private_key": mine}, "certificate", "malformed"),
        ("name constraints", {"certificate": pem(constrained, pki.root), "private_key": mine}, "certificate", "name_constraints"),
        ("serverAuth only", {"certificate": pem(server_only, pki.root), "private_key": mine}, "certificate", "extended_key_usage"),
        ("a leaf above", {"certificate": pem(under_leaf, leaf, pki.root), "private_key": mine}, "certificate", "chain_ca"),
        ("pathLen 0 above a CA", {"certificate": pem(under_intermediate, pki.intermediate, pki.root), "private_key": mine}, "certificate", "path_length"),
        ("an expired root", {"certificate": pem(of_old_root, old_root), "private_key": mine}, "certificate", "chain_validity"),
        ("fleetreg's name in other case and spaces", {"certificate": pem(posing), "private_key": mine}, "certificate", "reserved_subject"),
        ("an empty subject", {"certificate": pem(nameless, pki.root), "private_key": mine}, "certificate", "subject"),
        ("a terminal escape in the subject", {"certificate": pem(clearing, pki.root), "private_key": mine}, "certificate", "subject"),
        ("an unknown critical extension above", {"certificate": pem(of_odd_root, odd_root), "private_key": mine}, "certificate", "critical_extension"),
        ("an 8192-bit RSA key", {"certificate": pem(pki.intermediate), "private_key": oversized_rsa_key()}, "private_key", "key_type"),
    ]  # fmt: skip
