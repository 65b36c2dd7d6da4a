"""The machine-readable code of every refusal of the native device API (``reason_code``,
docs/device-api.md, "Refusal codes"): one closed list, so that a device's agent tells a
refusal to wait out from one to give up on without reading the ``reason`` sentence.

A registration's refusal is stored as its reason alone (a decision's ``reason``, a refused
outcome's): its code is derived from that sentence here (:func:`reason_code_of`), so a
poll that answers a stored refusal later gives the same code as the first answer."""

from __future__ import annotations

from enum import StrEnum

from shared.domain import derived_keys, hooks, x509_attestation
from shared.domain.admission import (
    REASON_NO_REGISTRATION,
    REASON_PAUSED,
    REASON_REVOKED_CODE,
    REASON_UNKNOWN_CODE,
)
from shared.domain.dedup import (
    REASON_BULK_ALREADY_CLAIMED,
    REASON_BULK_NOT_LISTED,
    REASON_DELETED,
    REASON_DISABLED,
    Quota,
    quota_of_reason,
)


class ReasonCode(StrEnum):
    """Why the device API refused a call (401, 403, 429). Never renamed: devices in the
    field compare them. :data:`TEMPORARY` says which are worth trying again."""

    UNKNOWN_CODE = "unknown_code"  # a Bulk Identification Code the registry does not know
    REVOKED_CODE = "revoked_code"  # a code revoked by a rotation
    NO_REGISTRATION = "no_registration"  # no active registration uses the code's product
    PAUSED = "paused"  # the auto registration is paused
    DISABLED = "disabled"  # the device is disabled by the operator
    QUOTA = "quota"  # the registration's max_devices reached
    CLONE_LIMIT = "clone_limit"  # the clone limit of a hardware ID reached
    NOT_LISTED = "not_listed"  # bulk: hardware ID not listed, or a wrong registration key
    ALREADY_REGISTERED = "already_registered"  # bulk: registered once; the operator must reset it
    PROOF_INVALID = "proof_invalid"  # derived key: a missing, wrong or replayed proof
    PROOF_TIME = "proof_time"  # derived key: a right proof refused for its time (server_time)
    CERTIFICATE_REFUSED = "certificate_refused"  # x509: the client certificate refused
    HOOK_DENIED = "hook_denied"  # the registration hook denied it (its reason follows in the text)
    # The hook never answered while the claim was held for it (fail closed, past the hold):
    # registering again asks it again.
    HOOK_UNANSWERED = "hook_unanswered"
    THROTTLED = "throttled"  # every 429: wait Retry-After
    UNAUTHORIZED = "unauthorized"  # 401: no, or a wrong, device secret; an unknown device
    CREDENTIALS_REPLACED = "credentials_replaced"  # 401: the operator's reset or move, a reclaim
    DEVICE_DELETED = "device_deleted"  # 401 (or a poll's 403): the device was deleted
    # Added beside the interface's list (issue 26 allows it: no code there fits):
    OTHER_REGISTRATION = "other_registration"  # EST: the label is not the device's registration
    NOT_ISSUED = "not_issued"  # a certificate call: the device changed (disabled, reset) meanwhile
    OTHER = "other"  # a stored refusal no code above describes (an older release's sentence)


# The refusals a device tries again (at its capped backoff, never sooner than Retry-After):
# every other code is final for the call that got it (a 401's device registers again).
TEMPORARY = frozenset(
    {
        ReasonCode.PAUSED,
        ReasonCode.DISABLED,
        ReasonCode.QUOTA,
        ReasonCode.PROOF_TIME,
        ReasonCode.THROTTLED,
        ReasonCode.NOT_ISSUED,
        ReasonCode.HOOK_UNANSWERED,
    }
)

_BY_REASON: dict[str, ReasonCode] = {
    REASON_UNKNOWN_CODE: ReasonCode.UNKNOWN_CODE,
    REASON_REVOKED_CODE: ReasonCode.REVOKED_CODE,
    REASON_NO_REGISTRATION: ReasonCode.NO_REGISTRATION,
    REASON_PAUSED: ReasonCode.PAUSED,
    REASON_DISABLED: ReasonCode.DISABLED,
    REASON_DELETED: ReasonCode.DEVICE_DELETED,
    REASON_BULK_NOT_LISTED: ReasonCode.NOT_LISTED,
    REASON_BULK_ALREADY_CLAIMED: ReasonCode.ALREADY_REGISTERED,
    derived_keys.REASON_NO_PROOF: ReasonCode.PROOF_INVALID,
    derived_keys.REASON_WRONG_PROOF: ReasonCode.PROOF_INVALID,
    derived_keys.REASON_REPLAYED_PROOF: ReasonCode.PROOF_INVALID,
    derived_keys.REASON_REFERENCE_PROTOCOL: ReasonCode.PROOF_INVALID,
    derived_keys.REASON_PROOF_TIME: ReasonCode.PROOF_TIME,
    x509_attestation.REASON_REFERENCE_PROTOCOL: ReasonCode.CERTIFICATE_REFUSED,
    hooks.UNANSWERED_REASON: ReasonCode.HOOK_UNANSWERED,
}

_BY_QUOTA: dict[Quota, ReasonCode] = {
    "max_devices": ReasonCode.QUOTA,
    "clone_limit": ReasonCode.CLONE_LIMIT,
    "clone_rate": ReasonCode.THROTTLED,
}


def reason_code_of(reason: str) -> ReasonCode:
    """The code of a registration's refusal, from its reason (the sentence the intake or
    deduplication gave, as stored in the decision); :attr:`ReasonCode.OTHER` for a sentence
    of no known refusal."""
    if hooks.is_hook_denial(reason):  # first: the rest of its text is the operator's own
        return ReasonCode.HOOK_DENIED
    code = _BY_REASON.get(reason)
    if code is not None:
        return code
    quota = quota_of_reason(reason)
    if quota is not None:
        return _BY_QUOTA[quota]
    if x509_attestation.is_certificate_refusal(reason):
        return ReasonCode.CERTIFICATE_REFUSED
    return ReasonCode.OTHER


def reason_code_of_status(status: int) -> ReasonCode | None:
    """The code a 401 or 429 of the device API carries when the refusal names none itself
    (the throttle's 429s, shared by every service; a 401 of a wrong secret); None otherwise."""
    if status == 429:
        return ReasonCode.THROTTLED
    if status == 401:
        return ReasonCode.UNAUTHORIZED
    return None
