"""Attestation CAs of x509 auto registrations, as the API and CLI show them."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from services.operator.views.common import Json, time
from shared.db.attestation_cas import AttestationCa


def ca(found: AttestationCa) -> Json:
    """One CA: its certificate (PEM) and identity, whether it is verified, the verification
    code to sign (shown until and after verification: it proves nothing without the CA's
    key), its revoked serials (hex) and its uploaded CRL's times (null: none)."""
    pem = x509.load_der_x509_certificate(found.certificate).public_bytes(Encoding.PEM).decode()
    return {
        "id": found.id,
        "auto_registration_id": found.registration_id,
        "subject": found.subject,
        "serial": found.serial,
        "fingerprint_sha256": found.fingerprint,
        "not_after": found.not_after.isoformat(),
        "verified": found.verified_at is not None,
        "verified_at": time(found.verified_at),
        "verification_code": found.verification_code,
        "revoked_serials": list(found.revoked_serials),
        "crl": None
        if found.crl_uploaded_at is None
        else {"uploaded_at": time(found.crl_uploaded_at), "next_update": time(found.crl_next_update)},
        "created_at": found.created_at.isoformat(),
        "certificate": pem,
    }


def cas(found: list[AttestationCa]) -> Json:
    return {"cas": [ca(c) for c in found]}


def deleted_ca(found: AttestationCa) -> Json:
    return {"deleted": True} | ca(found)
