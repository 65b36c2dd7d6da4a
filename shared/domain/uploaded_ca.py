"""An issuing CA the operator uploads (``PUT /v1/account/issuing-ca``): the checks its
certificate chain and private key must pass before the account's device certificates
and CRL are signed with it (docs/device-identity.md, "Bringing your own intermediate").
Pure; the registry replaces the CA (shared/db/certificates.py).

Every refusal is InvalidInput (400) naming the ``field`` (``certificate`` or
``private_key``) and the ``rule``; no message ever quotes the private key."""

from __future__ import annotations

import hashlib
import itertools
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.domain.certificates import RSA_MAX_BITS, RSA_MIN_BITS, CaKey, IssuingCa
from shared.domain.inputs import refuse_unknown_fields
from shared.errors import InvalidInput

# Each PEM text (the chain, the key) at most this many characters: a chain of a few RSA-4096
# certificates is under 10 KiB.
MAX_TEXT_CHARS = 64 * 1024
# The intermediate and at most this many certificates above it.
MAX_CHAIN = 8
# The CA must stay valid at least this long: device certificates are clamped to its
# not_after (docs/device-identity.md says why), and one that expires tomorrow is a mistake.
MIN_REMAINING = timedelta(days=1)
# The self-made CAs' common names (shared/domain/certificates.py): an uploaded one may not
# pose as another account's (its CRL would share their issuer name).
SELF_MADE_CN = "fleetreg devices "
# The extended key usages a CA of a device certificate's path may list (or list none):
# OpenSSL, for one, refuses a client certificate whose path has a CA restricted otherwise.
CLIENT_EKUS = {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}


def comparable_name(name: x509.Name) -> tuple[tuple[str, str], ...]:
    """A name as relying parties compare two (RFC 5280 7.1, OpenSSL's canonical form):
    each attribute's OID and its value case-folded, inner whitespace collapsed, trimmed.
    ``CN=Foo  Bar`` and ``CN=foo bar`` are one issuer to them, so one to fleetreg."""
    return tuple((a.oid.dotted_string, re.sub(r"\s+", " ", str(a.value)).strip().casefold()) for a in name)


@dataclass(frozen=True)
class UploadedCa:
    """A checked upload: the intermediate, its key, the certificates above it (DER) and
    the intermediate's SHA-256 fingerprint (lower-case hex of its DER)."""

    certificate: x509.Certificate
    key: CaKey
    chain: tuple[bytes, ...]

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.certificate.public_bytes(serialization.Encoding.DER)).hexdigest()

    def issuing_ca(self, account_id: str, uploaded_at: datetime) -> IssuingCa:
        return IssuingCa(account_id, self.certificate, self.key, self.chain, uploaded_at)


def _refuse(field: str, rule: str, message: str) -> InvalidInput:
    return InvalidInput(message, field=field, rule=rule)


def _text(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        raise _refuse(field, "required", f"{field} must be a PEM text")
    if len(value) > MAX_TEXT_CHARS:
        raise _refuse(
            field, f"max_length={MAX_TEXT_CHARS}", f"{field} is longer than {MAX_TEXT_CHARS} characters"
        )
    return value


def _check_key_type(key: Any, field: str) -> None:
    p256 = isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1
    )
    rsa_ok = isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey) and (
        RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS
    )
    if p256 or rsa_ok:
        return
    raise _refuse(field, "key_type", f"the {field.replace('_', ' ')}'s key must be P-256 or RSA 2048-4096")


def _check_ca(certificate: x509.Certificate, now: datetime) -> None:
    """The intermediate may sign certificates and CRLs now (RFC 5280 4.2.1.9, 4.2.1.3)."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise _refuse(
            "certificate", "ca", "the first certificate must carry basicConstraints CA=true and keyUsage"
        ) from exc
    except ValueError as exc:  # a malformed extension
        raise _refuse("certificate", "malformed", "the first certificate has a malformed extension") from exc
    if not constraints.ca or (constraints.path_length is not None and constraints.path_length < 0):
        raise _refuse("certificate", "ca", "the first certificate is not a CA (basicConstraints CA=true)")
    if not usage.key_cert_sign or not usage.crl_sign:
        raise _refuse(
            "certificate", "key_usage", "the first certificate's keyUsage must allow keyCertSign and cRLSign"
        )
    for extension in certificate.extensions:
        if extension.critical and isinstance(extension.value, x509.UnrecognizedExtension):
            raise _refuse(
                "certificate",
                "critical_extension",
                "the first certificate has a critical extension nobody processes "
                f"({extension.oid.dotted_string})",
            )
    if not certificate.subject:
        raise _refuse(
            "certificate",
            "subject",
            "the first certificate's subject is empty: a CA's subject names it, as its "
            "certificates' and its CRL's issuer (RFC 5280 4.1.2.6)",
        )
    if any(unicodedata.category(c) == "Cc" for a in certificate.subject for c in str(a.value)):
        raise _refuse(
            "certificate",
            "subject",
            "the first certificate's subject has control characters: it is shown in tables, "
            "terminals and the audit trail",
        )
    names = [v for oid, v in comparable_name(certificate.subject) if oid == NameOID.COMMON_NAME.dotted_string]
    if any(n.startswith(SELF_MADE_CN) for n in names):
        raise _refuse(
            "certificate", "reserved_subject", f"a CN starting {SELF_MADE_CN!r} names fleetreg's own CAs"
        )
    if certificate.not_valid_before_utc > now:
        raise _refuse("certificate", "not_yet_valid", "the first certificate is not valid yet")
    if certificate.not_valid_after_utc <= now + MIN_REMAINING:
        raise _refuse("certificate", "expired", "the first certificate has expired or expires within a day")


def _check_parsed(certificates: list[x509.Certificate]) -> None:
    """Each certificate's names and extensions decode (they are parsed lazily: a subject of
    invalid UTF-8 raised out of the checks below, a 500)."""
    for position, certificate in enumerate(certificates, start=1):
        try:
            _ = certificate.subject, certificate.issuer, certificate.extensions
            certificate.subject.rfc4514_string()
        except ValueError as exc:
            raise _refuse(
                "certificate",
                "malformed",
                f"certificate {position} of the chain has a malformed name or extension",
            ) from exc


def _check_path(certificates: list[x509.Certificate], now: datetime) -> None:
    """What a relying party checks of the path above a device certificate (RFC 5280 6.1),
    for each certificate of the chain: valid now and for MIN_REMAINING; no nameConstraints
    (fleetreg names a device by its hardware ID, CN and SAN URI
    ``urn:fleetreg:hardware-id:...``, which it cannot promise to keep within them: every
    certificate outside them would be refused by relying parties, after the upload); an
    extendedKeyUsage, if any, allowing clientAuth; and above the first: a CA whose keyUsage
    (if any) allows keyCertSign and whose pathLen allows the CAs below it, with no critical
    extension nobody processes. Each signed by the next (its issuer's name and key)."""
    for position, certificate in enumerate(certificates, start=1):
        where = f"certificate {position} of the chain"
        if certificate.not_valid_before_utc > now or certificate.not_valid_after_utc <= now + MIN_REMAINING:
            raise _refuse(
                "certificate",
                "chain_validity",
                f"{where} is not valid now, or expires within a day",
            )
        extensions = certificate.extensions
        try:
            extensions.get_extension_for_class(x509.NameConstraints)
        except x509.ExtensionNotFound:
            pass
        else:
            raise _refuse(
                "certificate",
                "name_constraints",
                f"{where} carries nameConstraints: fleetreg names each device by its hardware ID "
                "(CN and SAN URI urn:fleetreg:hardware-id:<ID>) and cannot keep them within; "
                "upload an intermediate whose path has none",
            )
        try:
            ekus = set(extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            ekus = CLIENT_EKUS
        if not ekus & CLIENT_EKUS:
            raise _refuse(
                "certificate",
                "extended_key_usage",
                f"{where} has an extendedKeyUsage without clientAuth: relying parties would "
                "refuse the device certificates it leads to",
            )
        if position == 1:
            continue
        for extension in extensions:
            if extension.critical and isinstance(extension.value, x509.UnrecognizedExtension):
                raise _refuse(
                    "certificate",
                    "critical_extension",
                    f"{where} has a critical extension nobody processes ({extension.oid.dotted_string})",
                )
        try:
            constraints: x509.BasicConstraints | None = extensions.get_extension_for_class(
                x509.BasicConstraints
            ).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise _refuse("certificate", "chain_ca", f"{where} is not a CA (basicConstraints CA=true)")
        try:
            usage = extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is not None and not usage.key_cert_sign:
            raise _refuse("certificate", "chain_key_usage", f"{where}'s keyUsage does not allow keyCertSign")
        # The CAs below it, but for self-issued ones (RFC 5280 4.2.1.9).
        below = sum(1 for c in certificates[: position - 1] if c.subject != c.issuer)
        if constraints.path_length is not None and below > constraints.path_length:
            raise _refuse(
                "certificate",
                "path_length",
                f"{where} allows {constraints.path_length} CAs below it (pathLen), the chain has {below}",
            )
    for position, (child, parent) in enumerate(itertools.pairwise(certificates), start=2):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            raise _refuse(
                "certificate",
                "chain",
                f"certificate {position} of the chain did not sign certificate {position - 1}",
            ) from exc


def checked_upload(body: dict[str, Any], now: datetime | None = None) -> UploadedCa:
    """The CA of a ``PUT /v1/account/issuing-ca`` body ``{"certificate": PEM chain (the
    intermediate first, then its issuers), "private_key": PEM (PKCS#8 or traditional,
    unencrypted)}``, checked: each text at most MAX_TEXT_CHARS, parseable, at most
    1 + MAX_CHAIN certificates; the first a CA (basicConstraints CA=true) with keyUsage
    keyCertSign and cRLSign, no unknown critical extension, a subject (no control
    characters), not named as fleetreg's own CAs (CN ``fleetreg devices ...``, compared as
    :func:`comparable_name`), valid now and for at least MIN_REMAINING; its key P-256 or
    RSA 2048-4096 and the private key's; the path above it as a relying party checks it
    (:func:`_check_path`: each certificate valid for MIN_REMAINING, no nameConstraints,
    clientAuth allowed, the ones above CAs within their pathLen, each signed by the next).
    InvalidInput (400) with ``field`` and ``rule`` otherwise."""
    now = now or datetime.now(UTC)
    refuse_unknown_fields(body, ("certificate", "private_key"), what="an issuing CA")
    chain_text, key_text = _text(body, "certificate"), _text(body, "private_key")
    try:
        certificates = x509.load_pem_x509_certificates(chain_text.encode("utf-8"))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _refuse(
            "certificate", "malformed", "certificate is not a PEM chain of X.509 certificates"
        ) from exc
    if len(certificates) > 1 + MAX_CHAIN:
        raise _refuse(
            "certificate",
            f"max_chain={MAX_CHAIN}",
            f"at most {MAX_CHAIN} certificates above the intermediate",
        )
    try:
        # Unchecked here: OpenSSL's check of an RSA key tests its primes, tens of seconds
        # for an 8192-bit one (hours at this field's length), on the event loop. An RSA key
        # of an accepted size is checked below.
        key = serialization.load_pem_private_key(
            key_text.encode("utf-8"), password=None, unsafe_skip_rsa_key_validation=True
        )
    except TypeError as exc:  # encrypted (or a password given for none)
        raise _refuse("private_key", "encrypted", "private_key must be unencrypted PEM") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _refuse("private_key", "malformed", "private_key is not a PEM private key") from exc
    _check_parsed(certificates)
    intermediate = certificates[0]
    _check_ca(intermediate, now)
    try:
        public = intermediate.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _refuse("certificate", "key_type", "the first certificate's key is not supported") from exc
    _check_key_type(public, "certificate")
    _check_key_type(key, "private_key")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != public.public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise _refuse("private_key", "key_mismatch", "private_key is not the key of the first certificate")
    if isinstance(key, rsa.RSAPrivateKey):
        try:
            serialization.load_pem_private_key(key_text.encode("utf-8"), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise _refuse("private_key", "malformed", "private_key is not a consistent RSA key") from exc
    _check_path(certificates, now)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)  # _check_key_type
    return UploadedCa(
        intermediate,
        key,
        tuple(c.public_bytes(serialization.Encoding.DER) for c in certificates[1:]),
    )
