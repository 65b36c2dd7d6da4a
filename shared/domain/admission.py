"""Whether a Bulk Identification Code admits a device now, and why not."""

from __future__ import annotations

from dataclasses import dataclass

REASON_UNKNOWN_CODE = "unknown bulk identification code"
REASON_REVOKED_CODE = "bulk identification code revoked: the operator rotated it"
REASON_NO_REGISTRATION = "no active registration uses this product"
REASON_PAUSED = "auto registration paused by the operator"


@dataclass(frozen=True)
class CodeAdmission:
    """What a Bulk Identification Code opens, as the registry knows it now."""

    code: str
    revoked: bool
    account_id: str
    product_id: str
    registration_id: str | None  # the auto registration, or one published bulk registration
    kind: str | None
    status: str | None


def admission_refusal(admission: CodeAdmission | None) -> str | None:
    """Why a code admits no device now, or None when it does."""
    if admission is None:
        return REASON_UNKNOWN_CODE
    if admission.revoked:
        return REASON_REVOKED_CODE
    if admission.registration_id is None:
        return REASON_NO_REGISTRATION
    if admission.kind == "auto" and admission.status != "active":
        return REASON_PAUSED
    return None
