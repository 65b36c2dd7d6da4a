"""Access: the account a key acts for and its API keys (a new key's secret shown once)."""

from __future__ import annotations

import hashlib

from services.operator.views.common import Json, time
from shared.db.accounts import ApiKey, IssuedApiKey
from shared.domain.accounts import Account
from shared.domain.certificates import IssuingCa


def account(found: Account) -> Json:
    return {"id": found.id, "name": found.name}


def api_key(found: ApiKey) -> Json:
    return {
        "id": found.id,
        "prefix": found.prefix,
        "label": found.label,
        "read_only": found.read_only,
        "role": found.role,
        "user_email": found.user_email,
        "service_account": found.service_account,
        "created_at": found.created_at.isoformat(),
        "revoked_at": time(found.revoked_at),
    }


def api_keys(found: list[ApiKey]) -> Json:
    return {"api_keys": [api_key(k) for k in found]}


def issued_api_key(issued: IssuedApiKey) -> Json:
    return {
        "id": issued.id,
        "api_key": issued.key,
        "label": issued.label,
        "read_only": issued.read_only,
        "role": issued.role,
        "note": "shown once: store it now, it cannot be shown again",
    }


def revoked_api_key(key_id: str) -> Json:
    return {"revoked": key_id}


def issuing_ca(ca: IssuingCa) -> Json:
    """The account's issuing CA: its certificate (PEM; an uploaded intermediate's then the
    chain above it), subject, validity, SHA-256 fingerprint, whether the operator uploaded
    it (and when), and the path of its CRL on the device API (unauthenticated)."""
    return {
        "subject": ca.certificate.subject.rfc4514_string(),
        "uploaded": ca.uploaded_at is not None,
        "uploaded_at": time(ca.uploaded_at),
        "fingerprint_sha256": hashlib.sha256(ca.der).hexdigest(),
        "serial": format(ca.certificate.serial_number, "x"),
        "not_before": ca.certificate.not_valid_before_utc.isoformat(),
        "not_after": ca.certificate.not_valid_after_utc.isoformat(),
        "certificate_pem": ca.pem,
        "crl_path": f"/v1/accounts/{ca.account_id}/crl",
        "est_path": "/.well-known/est/<auto registration ID>/",
    }
