"""X.509 attestation (issue 25, docs/device-identity.md#x509-certificates-x509): the rules, pure.

An auto registration in ``x509`` mode trusts the CA certificates its operator uploaded
(root or intermediate) once each is *verified*: the operator proved possession of its key
by uploading a certificate whose subject CN is the random verification code fleetreg gave
at the upload, signed by that key (as AWS IoT's ``get-registration-code`` and Azure DPS's
"verification code" do). A device then presents a certificate of its own key (its private
key often in a secure element) that chains to one of those CAs, directly or through
intermediates it presents too; its hardware ID comes from the certificate
(:data:`HARDWARE_ID_SOURCES`).

Everything here is parsing and checking with ``cryptography``: no I/O, no clock of its own
(``now`` is given). Signatures are checked with :meth:`x509.Certificate.verify_directly_issued_by`
(RFC 5280 section 6.1.3: the issuer name matches and the signature verifies).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from shared.domain.identifiers import validate_hardware_id
from shared.errors import DomainError, InvalidInput

HardwareIdFrom = Literal["cn", "san:dns", "san:uri"]
# Where a device certificate's hardware ID is read (an auto registration's setting):
# ``cn`` the subject's one commonName; ``san:dns`` its one DNS name in subjectAltName;
# ``san:uri`` its one URI in subjectAltName, the part after its last ':' or '/'
# (``urn:fleetreg:hardware-id:H`` or ``https://maker.example/devices/H`` give ``H``).
HARDWARE_ID_SOURCES: tuple[HardwareIdFrom, ...] = ("cn", "san:dns", "san:uri")

# A P-256 certificate is about 600 bytes of DER, an RSA-4096 one about 1,500: a CA or device
# certificate (PEM) past these is refused before it is parsed.
MAX_CERTIFICATE_PEM_CHARS = 16_384
MAX_CERTIFICATE_DER_BYTES = 8_192
# A CRL grows with its revocations (about 40 bytes each): 512 KiB hold some 12,000, and its
# base64 in a JSON body stays within the operator API's 1 MiB bound on a body.
MAX_CRL_BYTES = 524_288
# A device's certificate plus at most this many presented intermediates are looked at.
MAX_CHAIN = 4
MIN_RSA_BITS = 2048
_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]*?-----END CERTIFICATE-----")

E = TypeVar("E", bound=x509.ExtensionType)

# Refusals of a claim in an x509 registration (all counted against the caller's address,
# as a wrong proof is): no certificate, or one refused for a reason of :class:`Refusal`,
# answered as REASON_CERTIFICATE_PREFIX + its reason.
REASON_NO_CERTIFICATE = (
    "this auto registration takes X.509 certificates: present the device's client certificate "
    "(docs/device-identity.md)"
)
REASON_CERTIFICATE_PREFIX = "device certificate refused: "
# The reference protocol (apv/v27) carries no client certificate fleetreg reads.
REASON_REFERENCE_PROTOCOL = (
    "this auto registration takes X.509 certificates which the reference protocol cannot carry: "
    "use the native device API (/v1/registrations)"
)

RefusalRule = Literal[
    "malformed",
    "expired",
    "not_yet_valid",
    "unknown_issuer",
    "ca_not_verified",
    "self_signed",
    "ca_certificate",
    "key_usage",
    "extended_key_usage",
    "revoked",
    "no_hardware_id",
    "hardware_id_mismatch",
]


@dataclass(frozen=True)
class Refusal:
    """Why a device certificate is refused: ``rule`` (one of :data:`RefusalRule`, also the
    metric's label) and ``reason``, a sentence for the device (no commas or quotes: the
    reference client reads reasons as plain text)."""

    rule: RefusalRule
    reason: str


@dataclass(frozen=True)
class TrustedCa:
    """An uploaded attestation CA as device verification sees it: its certificate, whether
    it is ``verified`` (an unverified CA trusts nothing), the serials the operator revoked
    and those its uploaded CRL lists (integers: :func:`crl_serials`, read once, since a
    lookup in the CRL object scans it: 1.2 ms for 10,000 entries)."""

    id: str
    certificate: x509.Certificate
    verified: bool
    revoked_serials: frozenset[int] = frozenset()
    crl_serials: frozenset[int] = frozenset()


def is_certificate_refusal(reason: str) -> bool:
    """Whether a claim's refusal is X.509 attestation's (counted against its caller)."""
    return reason == REASON_NO_CERTIFICATE or reason.startswith(REASON_CERTIFICATE_PREFIX)


def new_verification_code() -> str:
    """A verification code: 128 random bits, 32 lower-case hex digits (fits a CN of 64)."""
    return secrets.token_hex(16)


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lower-case hex: how a CA is told apart."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def parse_certificate(text: str, field: str = "certificate") -> x509.Certificate:
    """One certificate from PEM (one block) or base64 DER: InvalidInput naming ``field``
    (``rule`` ``too_large`` or ``malformed``) otherwise; bounded before parsing."""
    return parse_certificates(text, field, at_most=1)[0]


def parse_certificates(text: str, field: str, *, at_most: int) -> list[x509.Certificate]:
    """1..``at_most`` certificates from concatenated PEM blocks (or one base64 DER)."""
    if not isinstance(text, str):
        raise InvalidInput(f"{field} must be a string (PEM)", field=field, rule="type=string")
    if len(text) > MAX_CERTIFICATE_PEM_CHARS * at_most:
        raise InvalidInput(
            f"{field} is longer than {MAX_CERTIFICATE_PEM_CHARS * at_most} characters",
            field=field,
            rule="too_large",
        )
    blocks = _PEM_BLOCK.findall(text) if "-----BEGIN" in text else [text]
    if not blocks or len(blocks) > at_most:
        raise InvalidInput(
            f"{field} must hold 1 to {at_most} PEM certificates", field=field, rule="malformed"
        )
    found = []
    for block in blocks:
        der = _der_of(block)
        if der is None or len(der) > MAX_CERTIFICATE_DER_BYTES:
            raise InvalidInput(f"{field} is not a PEM certificate", field=field, rule="malformed")
        try:
            found.append(x509.load_der_x509_certificate(der))
        except ValueError as exc:
            raise InvalidInput(f"{field} is not an X.509 certificate", field=field, rule="malformed") from exc
    return found


def _der_of(block: str) -> bytes | None:
    body = re.sub(r"-----(BEGIN|END) CERTIFICATE-----|\s", "", block)
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None


def check_ca_certificate(certificate: x509.Certificate, now: datetime) -> None:
    """An uploadable attestation CA: basicConstraints CA=true, keyUsage with keyCertSign,
    within its validity, a key of EC (P-256 and up), RSA (2048 bits and up) or Ed25519.
    InvalidInput (field ``certificate``, ``rule`` the check) otherwise."""
    if not _parses(certificate):
        raise InvalidInput(
            "certificate has extensions that do not parse", field="certificate", rule="malformed"
        )
    constraints = _extension(certificate, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise InvalidInput(
            "certificate is not a CA certificate (basicConstraints CA=true is required)",
            field="certificate",
            rule="ca=true",
        )
    usage = _extension(certificate, x509.KeyUsage)
    if usage is None or not usage.key_cert_sign:
        raise InvalidInput(
            "certificate's keyUsage must include keyCertSign",
            field="certificate",
            rule="key_usage=keyCertSign",
        )
    if certificate.not_valid_after_utc <= now:
        raise InvalidInput("certificate has expired", field="certificate", rule="expired")
    key = certificate.public_key()
    weak = (isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS) or (
        isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < 256
    )
    supported = isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey)
    if weak or not supported:
        raise InvalidInput(
            "certificate's key must be EC P-256 or larger, RSA 2048 bits or more, or Ed25519",
            field="certificate",
            rule="key",
        )


def check_verification_certificate(ca: x509.Certificate, proof: x509.Certificate, code: str) -> None:
    """The proof of possession of ``ca``'s key: ``proof``'s subject CN is the CA's
    verification ``code`` and ``ca``'s key signed it. InvalidInput (field
    ``verification_certificate``) saying which is wrong."""
    field = "verification_certificate"
    if _common_names(proof) != [code]:
        raise InvalidInput(
            "the verification certificate's subject CN must be this CA's verification code",
            field=field,
            rule="cn=verification_code",
        )
    if not _signed_by(proof, ca):
        raise InvalidInput(
            "the verification certificate is not signed by this CA's key (issuer and signature)",
            field=field,
            rule="signed_by_ca",
        )


def parse_crl(data: bytes, ca: x509.Certificate) -> x509.CertificateRevocationList:
    """A CRL of ``ca`` from DER or PEM bytes: bounded (:data:`MAX_CRL_BYTES`), its issuer
    ``ca``'s subject and its signature made by ``ca``'s key (RFC 5280 section 6.3.3).
    InvalidInput (field ``crl``) otherwise. Its distribution points are never fetched."""
    if len(data) > MAX_CRL_BYTES:
        raise InvalidInput(f"crl is larger than {MAX_CRL_BYTES} bytes", field="crl", rule="too_large")
    try:
        crl = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(b"-----BEGIN")
            else x509.load_der_x509_crl(data)
        )
    except ValueError as exc:
        raise InvalidInput("crl is not a DER or PEM X.509 CRL", field="crl", rule="malformed") from exc
    if crl.issuer != ca.subject:
        raise InvalidInput("the CRL's issuer is not this CA", field="crl", rule="issuer")
    # A certificate's key may be one that signs nothing (X25519, X448): such a CA's CRL
    # cannot verify. Narrowed here rather than a silenced type check.
    key = ca.public_key()
    valid = False
    if isinstance(
        key,
        dsa.DSAPublicKey
        | ec.EllipticCurvePublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey
        | rsa.RSAPublicKey,
    ):
        try:
            valid = crl.is_signature_valid(key)
        except (TypeError, ValueError, InvalidSignature):
            valid = False
    if not valid:
        raise InvalidInput(
            "the CRL's signature does not verify with this CA's key", field="crl", rule="signature"
        )
    return crl


def verify_device_certificate(
    leaf: x509.Certificate,
    presented_chain: Sequence[x509.Certificate],
    cas: Sequence[TrustedCa],
    now: datetime,
    hardware_id_from: HardwareIdFrom = "cn",
) -> str | Refusal:
    """The hardware ID a device certificate attests, or the :class:`Refusal` saying why not.

    ``leaf`` must be an end-entity certificate (not self-signed, no CA=true, keyUsage (when
    present) with digitalSignature, extendedKeyUsage (when present) with clientAuth) valid
    at ``now`` (timezone-aware), chaining to a *verified* CA of ``cas`` (those of the
    device's auto registration only) directly or through certificates of ``presented_chain``
    that are CAs valid at ``now``. Revoked: a certificate issued by a trusted CA whose serial
    the operator listed or whose uploaded CRL lists it (a revoked intermediate revokes all it
    signed). The hardware ID is read as ``hardware_id_from`` says (:data:`HARDWARE_ID_SOURCES`)
    and must be a valid hardware ID."""
    if not all(_parses(c) for c in (leaf, *presented_chain[:MAX_CHAIN])):
        return Refusal("malformed", "a presented certificate has extensions that do not parse")
    if any(_unprocessed_critical(c) for c in (leaf, *presented_chain[:MAX_CHAIN])):
        # RFC 5280 section 4.2: such a certificate must be rejected (the handshake does so too)
        return Refusal(
            "malformed", "a presented certificate has a critical extension fleetreg does not process"
        )
    refusal = _leaf_refusal(leaf, now)
    if refusal is not None:
        return refusal
    refusal = _chain_refusal(leaf, presented_chain[:MAX_CHAIN], cas, now)
    if refusal is not None:
        return refusal
    return hardware_id_of(leaf, hardware_id_from)


def _leaf_refusal(leaf: x509.Certificate, now: datetime) -> Refusal | None:
    if leaf.issuer == leaf.subject and _signed_by(leaf, leaf):
        return Refusal(
            "self_signed", "the device certificate is self-signed: it must be issued by a trusted CA"
        )
    constraints = _extension(leaf, x509.BasicConstraints)
    if constraints is not None and constraints.ca:
        return Refusal("ca_certificate", "the device certificate is a CA certificate (CA=true)")
    usage = _extension(leaf, x509.KeyUsage)
    if usage is not None and not usage.digital_signature:
        return Refusal("key_usage", "the device certificate's keyUsage lacks digitalSignature")
    extended = _extension(leaf, x509.ExtendedKeyUsage)
    if extended is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in extended:
        return Refusal("extended_key_usage", "the device certificate's extendedKeyUsage lacks clientAuth")
    return _validity_refusal(leaf, now, "device certificate")


def _validity_refusal(certificate: x509.Certificate, now: datetime, what: str) -> Refusal | None:
    if now < certificate.not_valid_before_utc:
        return Refusal(
            "not_yet_valid",
            f"the {what} is not valid yet (from {certificate.not_valid_before_utc.isoformat()})",
        )
    if now > certificate.not_valid_after_utc:
        return Refusal("expired", f"the {what} expired at {certificate.not_valid_after_utc.isoformat()}")
    return None


def _chain_refusal(
    leaf: x509.Certificate, presented: Sequence[x509.Certificate], cas: Sequence[TrustedCa], now: datetime
) -> Refusal | None:
    current, what = leaf, "device certificate"
    for below in range(len(presented) + 1):  # below: the intermediates under the next issuer
        for ca in cas:
            if current.issuer == ca.certificate.subject and _signed_by(current, ca.certificate):
                if _path_too_long(ca.certificate, below):
                    return Refusal("unknown_issuer", "the chain is longer than the CA's pathLenConstraint")
                if not ca.verified:
                    return Refusal(
                        "ca_not_verified",
                        "the issuing CA is uploaded but not verified: the operator must verify it",
                    )
                if current.serial_number in ca.revoked_serials or current.serial_number in ca.crl_serials:
                    return Refusal("revoked", f"the {what} is revoked (serial {current.serial_number:x})")
                return _validity_refusal(ca.certificate, now, "issuing CA")
        issuer = next(
            (
                c
                for c in presented
                if c.subject == current.issuer and c is not current and _signed_by(current, c)
            ),
            None,
        )
        if issuer is None:
            break
        constraints = _extension(issuer, x509.BasicConstraints)
        if constraints is None or not constraints.ca:
            return Refusal("unknown_issuer", "a presented intermediate certificate is not a CA")
        usage = _extension(issuer, x509.KeyUsage)
        if (usage is not None and not usage.key_cert_sign) or _path_too_long(issuer, below):
            # RFC 5280 sections 4.2.1.3 and 4.2.1.9: its key may not sign certificates, or not this deep
            return Refusal("unknown_issuer", "a presented intermediate certificate may not sign this one")
        refusal = _validity_refusal(issuer, now, "intermediate certificate")
        if refusal is not None:
            return refusal
        current, what = issuer, "intermediate certificate"
    return Refusal(
        "unknown_issuer", "the device certificate does not chain to a verified CA of this auto registration"
    )


def crl_serials(crl: x509.CertificateRevocationList) -> frozenset[int]:
    """The serials a CRL revokes (every entry; its reasons and dates are not looked at: a
    listed certificate is refused, RFC 5280 section 6.3.3)."""
    return frozenset(entry.serial_number for entry in crl)


def hardware_id_of(certificate: x509.Certificate, source: HardwareIdFrom) -> str | Refusal:
    """The hardware ID ``certificate`` names under ``source``, or a ``no_hardware_id`` Refusal."""
    if source == "cn":
        values = _common_names(certificate)
    else:
        san = _extension(certificate, x509.SubjectAlternativeName)
        kind: type[x509.DNSName | x509.UniformResourceIdentifier] = (
            x509.DNSName if source == "san:dns" else x509.UniformResourceIdentifier
        )
        values = [str(v) for v in san.get_values_for_type(kind)] if san is not None else []
        if source == "san:uri":
            values = [re.split(r"[:/]", v.rstrip("/"))[-1] for v in values]
    if len(values) != 1:
        return Refusal("no_hardware_id", f"the device certificate must name one hardware ID in its {source}")
    try:
        return validate_hardware_id(values[0], source)
    except DomainError:
        return Refusal(
            "no_hardware_id",
            f"the device certificate's {source} is not a hardware ID (1-64 of A-Z a-z 0-9 . _ -)",
        )


def _common_names(certificate: x509.Certificate) -> list[str]:
    return [str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


# The critical extensions the checks above process; any other critical one refuses.
_PROCESSED = {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE}
_PROCESSED |= {ExtensionOID.SUBJECT_ALTERNATIVE_NAME}


def _unprocessed_critical(certificate: x509.Certificate) -> bool:
    return any(e.critical and e.oid not in _PROCESSED for e in certificate.extensions)


def _path_too_long(issuer: x509.Certificate, below: int) -> bool:
    constraints = _extension(issuer, x509.BasicConstraints)
    return constraints is not None and constraints.path_length is not None and below > constraints.path_length


def _signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _extension(certificate: x509.Certificate, kind: type[E]) -> E | None:
    """The extension of ``kind``, or None. A certificate whose extensions do not parse (a
    duplicate, garbage) raises ValueError: callers check :func:`_parses` first, so that a
    malformed extension is never read as an absent one."""
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _parses(certificate: x509.Certificate) -> bool:
    try:
        certificate.extensions  # noqa: B018 - parsed here, once, for its ValueError
    except ValueError:
        return False
    return True
