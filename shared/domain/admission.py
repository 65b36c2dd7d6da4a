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
    # The registration has a registration hook (docs/registration-hook.md): a claim that
    # creates or claims a device is reserved until the hook allows it; its timeout (ms).
    hooked: bool = False
    hook_timeout_ms: int = 0


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


def kept_once_an_hour(reason: str) -> bool:
    """Whether a refusal for ``reason`` is recorded at most once per product, hardware ID
    and hour: a revoked code's claims (a stale board after a rotation retries at every
    boot, and whoever kept an old image can retry forever). The operator still sees each
    stale board, once an hour, in the audit trail."""
    return reason == REASON_REVOKED_CODE


def recorded(account_id: str | None) -> bool:
    """Whether a decision is written to the audit trail at all: never for a code the
    registry does not know (no account could read it; anyone can send one, so each
    would be a row from a stranger). The intake refuses those itself; deduplication
    sees one only when a product was deleted a moment before."""
    return account_id is not None
