"""Attestation CAs of ``x509`` auto registrations (docs/device-identity.md, "X.509
certificates"): upload a CA certificate (answered with its verification code), verify it
with a certificate of that code signed by its key, list, show and delete, revoke serials
under it, upload its CRL. The rules are shared.domain.x509_attestation's; the registry's
shared.db.attestation_cas."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from shared.db import attestation_cas, registrations
from shared.db.attestation_cas import AttestationCa, NewCa
from shared.db.pool import Pool
from shared.domain import x509_attestation as xa
from shared.domain.accounts import Account
from shared.errors import InvalidInput, shortened

# A serial as operators write it: hex digits, optionally in colon-separated pairs (what
# ``openssl x509 -serial`` and browsers show), an optional 0x; RFC 5280 bounds it to 20 octets.
_SERIAL = re.compile(r"(?:0x)?([0-9a-fA-F]{1,40}|[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){0,19})")


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        name = shortened(unknown[0])
        raise InvalidInput(f"unknown field {name!r}", field=name, rule="known_fields")


def _required(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None or value == "":
        raise InvalidInput(f"{name} is required", field=name, rule="required")
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string (PEM)", field=name, rule="type=string")
    return value


def serial_of(value: object, field: str = "serial") -> str:
    """A certificate serial from hex (``0a:1b:...``, ``0x0A1B``, ``a1b``): lower-case hex
    without leading zeros. InvalidInput otherwise."""
    match = _SERIAL.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise InvalidInput(
            f"{field} must be a certificate serial in hex (at most 20 octets)", field=field, rule="format=hex"
        )
    return format(int(match.group(1).replace(":", ""), 16), "x")


async def add_ca(pool: Pool, account: Account, registration_id: str, body: dict[str, Any]) -> AttestationCa:
    """Upload ``body``'s ``certificate`` (PEM: a root or intermediate CA; checked by
    shared.domain.x509_attestation.check_ca_certificate) to an x509 auto registration; the
    CA as stored, unverified, with its new verification code."""
    _only(body, {"certificate"})
    certificate = xa.parse_certificate(_required(body, "certificate"))
    now = datetime.now(UTC)
    xa.check_ca_certificate(certificate, now)
    new = NewCa(
        id=str(uuid.uuid4()),
        certificate=certificate.public_bytes(Encoding.DER),
        fingerprint=xa.fingerprint(certificate),
        subject=certificate.subject.rfc4514_string()[:1024],
        serial=format(certificate.serial_number, "x"),
        not_after=certificate.not_valid_after_utc,
        verification_code=xa.new_verification_code(),
    )
    return await attestation_cas.add_ca(pool, account, registration_id, new)


async def verify_ca(pool: Pool, account: Account, ca_id: str, body: dict[str, Any]) -> AttestationCa:
    """Verify a CA: ``body``'s ``verification_certificate`` (PEM) must have the CA's
    verification code as its subject CN and be signed by the CA's key (InvalidInput, field
    ``verification_certificate``, saying which is wrong)."""
    _only(body, {"verification_certificate"})
    text = _required(body, "verification_certificate")
    found = await attestation_cas.get_ca(pool, account.id, ca_id)
    proof = xa.parse_certificate(text, "verification_certificate")
    xa.check_verification_certificate(_certificate(found), proof, found.verification_code)
    return await attestation_cas.mark_verified(pool, account, ca_id)


async def list_cas(pool: Pool, account: Account, registration_id: str) -> list[AttestationCa]:
    """The attestation CAs of one of the account's auto registrations (NotFound otherwise)."""
    await registrations.get_registration(pool, account.id, "auto", registration_id)
    return await attestation_cas.list_cas(pool, account.id, registration_id)


async def get_ca(pool: Pool, account: Account, ca_id: str) -> AttestationCa:
    return await attestation_cas.get_ca(pool, account.id, ca_id)


async def delete_ca(pool: Pool, account: Account, ca_id: str) -> AttestationCa:
    return await attestation_cas.delete_ca(pool, account, ca_id)


async def revoke_serial(pool: Pool, account: Account, ca_id: str, body: dict[str, Any]) -> AttestationCa:
    """Add ``body``'s ``serial`` (hex) to the CA's revoked serials (idempotent)."""
    _only(body, {"serial"})
    serial = serial_of(body.get("serial"))
    await attestation_cas.change_revocation(pool, account, ca_id, serial, revoked=True)
    return await attestation_cas.get_ca(pool, account.id, ca_id)


async def unrevoke_serial(pool: Pool, account: Account, ca_id: str, body: dict[str, Any]) -> AttestationCa:
    """Remove ``body``'s ``serial`` (hex) from the CA's revoked serials (idempotent)."""
    _only(body, {"serial"})
    await attestation_cas.change_revocation(
        pool, account, ca_id, serial_of(body.get("serial")), revoked=False
    )
    return await attestation_cas.get_ca(pool, account.id, ca_id)


async def upload_crl(pool: Pool, account: Account, ca_id: str, body: dict[str, Any]) -> AttestationCa:
    """Store ``body``'s ``crl`` (PEM, or base64 of the DER) as the CA's CRL: its issuer must
    be the CA and its signature the CA's (InvalidInput, field ``crl``). It replaces the CRL
    before; its distribution points and OCSP are never fetched."""
    _only(body, {"crl"})
    text = _required(body, "crl")
    found = await attestation_cas.get_ca(pool, account.id, ca_id)
    if text.lstrip().startswith("-----BEGIN"):
        data = text.encode()
    else:
        try:
            data = base64.b64decode(re.sub(r"\s", "", text), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput("crl is neither PEM nor base64 DER", field="crl", rule="malformed") from exc
    crl = xa.parse_crl(data, _certificate(found))
    return await attestation_cas.set_crl(
        pool, account, ca_id, crl.public_bytes(Encoding.DER), crl.next_update_utc, len(crl)
    )


def _certificate(found: AttestationCa) -> x509.Certificate:
    return x509.load_der_x509_certificate(found.certificate)
