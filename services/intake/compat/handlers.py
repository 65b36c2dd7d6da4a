"""The reference client's registration protocol (apv/v27) on the same registry and rules.

Decisions are made where the protocol lets them be:
* auto registration: at the friendly-configuration call (step 2), from the fingerprint
  and secret the device reported at the information call (step 1); a clone is told
  ``reset`` with its new hardware ID;
* bulk registration: at the register call (step 5), the first call that carries the
  registration key; step 2 answers the same whether or not the hardware ID is listed,
  so it tells nothing about the CSV.
Every answer is built by :mod:`services.intake.compat.answers` so that the client can
read it. Whether a device's secrets may be handed out is decided by the rules shared
with the native API (:mod:`shared.domain.release`).
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.intake.compat.answers import answer, refused
from services.intake.handlers import (
    BulkClaim,
    Claimant,
    Intake,
    PublishSignal,
    code_known,
    count_new_device,
    held_clone_rate,
    hold_unproven_claim,
    register,
    remember_clone_rate,
    retry_later,
)
from shared.db import compat, devices, files, products
from shared.db.compat import Recorded, Reported
from shared.db.pool import Pool
from shared.domain import x509_attestation
from shared.domain.admission import REASON_REVOKED_CODE, REASON_UNKNOWN_CODE, admission_refusal
from shared.domain.credentials import DEFAULT_STALE_CREDENTIAL_SECONDS, Keyring, stale
from shared.domain.dedup import REASON_BULK_NOT_LISTED, REASON_DISABLED, is_quota_refusal
from shared.domain.derived_keys import REASON_REFERENCE_PROTOCOL
from shared.domain.identifiers import new_request_id, normalize_code, validate_hardware_id
from shared.domain.release import Check, Release, claimed_by, secret_check, service_secret_release
from shared.errors import InvalidInput, TooManyRequests
from shared.events import DeviceSignal, RegistrationRequested
from shared.metrics import COMPAT_NEW_HARDWARE_IDS_REFUSED
from shared.throttle import target_of

PENDING = "registration in progress: try again shortly"
NOT_REGISTERED = "device not registered: boot again to register"
UNKNOWN_ID = "unknown provisioning ID"
CONFIRMED = "device already provisioned: reset by the operator needed"
SERVICE_DISABLED = "service disabled by the operator"
# Step 1 past the source's cap of new hardware IDs a minute; the client ignores step 1's
# answer, so step 2 (whose refusal it logs, then tries again at its next boot) says it
# too, rather than deciding the device without what it reported (a rebooting device
# would be taken for a clone). No protocol key word, comma or quote (answers.py).
TOO_MANY_NEW = "too many new hardware IDs reported from this address in a minute: boot again later"
TEXT_MAX = 128
# Refusals that count against the caller's address (shared/throttle.py): what a
# guesser of codes, keys, secrets or provisioning IDs gets. A paused registration or
# a disabled device is the operator's doing and does not count.
# A derived_key registration's code is no credential (it names the registration): its calls
# here prove nothing, so they count too.
COUNTED = frozenset(
    {
        REASON_UNKNOWN_CODE,
        REASON_REVOKED_CODE,
        REASON_BULK_NOT_LISTED,
        UNKNOWN_ID,
        NOT_REGISTERED,
        REASON_REFERENCE_PROTOCOL,
        x509_attestation.REASON_REFERENCE_PROTOCOL,
    }
)
# Why step 5 hands out no secret, in the protocol's words.
REFUSALS = {
    Release.DISABLED: REASON_DISABLED,
    Release.PROVISIONED: CONFIRMED,
    Release.NOT_REGISTERED: NOT_REGISTERED,
}


@dataclass(frozen=True)
class Reply:
    """An answer's text, whether it is a refusal counted against the caller, and what the
    refused call guessed (:func:`shared.throttle.target_of`), when that is known."""

    text: str
    counted: bool = False
    target: str | None = None


def _refusal(reason: str, target: str | None = None) -> Reply:
    # What a source tried to create past the quota or the clone limit counts too.
    return Reply(refused(reason), counted=reason in COUNTED or is_quota_refusal(reason), target=target)


def _stale(reason: str) -> Reply:
    """A refusal of a stale credential (a rotated code, a replaced device secret): not counted."""
    return Reply(refused(reason))


def clone_rate_refusal(retry_after: int) -> str:
    """Step 2's words for the clone rate per source (never counted against the source):
    the client logs them and tries again at its next boot."""
    return f"too many new devices with this hardware ID from this address: boot again in {retry_after} s"


async def _native_only(r: Intake, code: str) -> Reply | None:
    """The refusal of every step for a code whose auto registration takes derived keys or
    X.509 certificates: this protocol carries neither (docs/device-identity.md), so such
    devices use the native API. None for any other code."""
    found = await r.group_keys.of_code(r.pool, code)
    if found.attestation == "code":
        return None
    if found.attestation == "x509":
        return _refusal(x509_attestation.REASON_REFERENCE_PROTOCOL, target_of("code", code))
    return _refusal(REASON_REFERENCE_PROTOCOL, target_of("code", code))


def _ok(text: str) -> Reply:
    return Reply(text)


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        value = str(value)
    return value[:TEXT_MAX]


def _checked(code: str, hardware_id: str) -> tuple[str, str] | str:
    """(code, hardware ID) in canonical form, or the reason they cannot be used."""
    try:
        return normalize_code(code), validate_hardware_id(hardware_id)
    except InvalidInput as exc:
        return exc.message


async def information(r: Intake, body: dict[str, Any], source: str) -> Reply:
    """Step 1: remember the device's fingerprint and the digest of the secret it holds,
    for the caller's address ``source``: steps 2 and 5 read only what was reported from
    their own address, so nobody elsewhere can swap a rebooting device's record between
    its steps (which would make the real device a clone).

    One record per (code, hardware ID, source), overwritten; at most
    FLEETREG_COMPAT_NEW_HARDWARE_IDS_PER_MINUTE new ones a minute per source, past it
    :data:`TOO_MANY_NEW`. An unknown code is refused without a registry write; so is a
    revoked one, with its reason, counted as at step 2 (not at all within
    FLEETREG_STALE_CREDENTIAL_SECONDS of its rotation)."""
    checked = _checked(_text(body, "BulkIdentificationCode"), _text(body, "HardwareId"))
    if isinstance(checked, str):
        return _refusal(checked)
    code, hardware_id = checked
    pool, keyring = r.pool, r.keyring
    if not await code_known(pool, r.codes, code, "compat"):
        return _refusal(REASON_UNKNOWN_CODE, target_of("code", code))
    native_only = await _native_only(r, code)
    if native_only is not None:
        return native_only
    recorded = await compat.record_information(
        pool,
        code,
        hardware_id,
        keyring.fingerprint(_text(body, "CPUId"), _text(body, "MACAddress")),
        keyring.digest(_text(body, "DeviceSecret")),
        _text(body, "OSLabel"),
        source,
        new_per_minute=r.settings.compat.new_hardware_ids_per_minute,
    )
    if recorded is Recorded.CAPPED:
        COMPAT_NEW_HARDWARE_IDS_REFUSED.inc()
        return _refusal(TOO_MANY_NEW)
    if recorded:
        return _ok(answer("true"))
    # Known but not current: a code revoked by a rotation (or deleted a moment ago). A board
    # on the old image gets the revoked reason, not counted against its address, as at
    # step 2 and on the native API (nothing was written: no writes to bound either).
    revoked_at = await products.code_revoked_at(pool, code)
    if revoked_at is not None:
        if stale(revoked_at, datetime.now(UTC), r.settings.throttle.stale_credential_seconds):
            return _stale(REASON_REVOKED_CODE)
        return _refusal(REASON_REVOKED_CODE, target_of("code", code))
    return _refusal(REASON_UNKNOWN_CODE, target_of("code", code))


def _claim(
    keyring: Keyring, claimant: Claimant, reported: Reported, key_digest: str = ""
) -> RegistrationRequested:
    """The request of ``claimant``'s claim, with what its step 1 reported from its address."""
    return RegistrationRequested(
        request_id=new_request_id(keyring.request_tag),
        received_at=time.time(),
        bulk_identification_code=claimant.code,
        hardware_id=claimant.hardware_id,
        fingerprint=reported.fingerprint,
        secret_digest=reported.secret_digest,
        registration_key_digest=key_digest,
        protocol="compat",
        source=claimant.source,
    )


async def friendly_configuration(r: Intake, code_text: str, hardware_id_text: str, source: str) -> Reply:
    """Step 2: register (auto) or admit (bulk) the device; answer its provisioning IDs,
    or ``reset`` with the hardware ID a clone must take.

    A device whose step 1 was refused by its source's cap of new hardware IDs (it has
    no record from this address, and the source is at the cap) is refused with
    :data:`TOO_MANY_NEW`: decided without what it reported, a rebooting device would be
    taken for a clone, and a bulk device's step 5 for another board.

    The code's new-device limit (FLEETREG_LIMIT_NEW_DEVICES_PER_CODE) is checked and
    counted here for an auto registration, by the native API's rule
    (:func:`services.intake.handlers.register_native`), and answered in the protocol's
    words."""
    checked = _checked(code_text, hardware_id_text)
    if isinstance(checked, str):
        return _refusal(checked)
    code, hardware_id = checked
    pool, throttle, new_per_minute = r.pool, r.throttle, r.settings.compat.new_hardware_ids_per_minute
    if not await code_known(pool, r.codes, code, "compat"):
        return _refusal(REASON_UNKNOWN_CODE, target_of("code", code))
    native_only = await _native_only(r, code)
    if native_only is not None:
        return native_only
    admission = (await products.resolve_codes(pool, [code])).get(code)
    reason = admission_refusal(admission)
    if reason == REASON_REVOKED_CODE and stale(
        await products.code_revoked_at(pool, code),
        datetime.now(UTC),
        r.settings.throttle.stale_credential_seconds,
    ):
        return _stale(reason)  # a board still on the old image, not a guesser
    if reason is not None or admission is None:
        return _refusal(reason or REASON_UNKNOWN_CODE, target_of("code", code))
    reported = await compat.information(pool, code, hardware_id, source)
    if reported == Reported("", "") and await compat.new_records_capped(pool, source, new_per_minute):
        return _refusal(TOO_MANY_NEW)
    # The bulk service's provisioning ID is the code itself, which the caller presented.
    projects = await compat.provisioning_ids(pool, code)
    if admission.kind == "bulk":
        return _ok(answer("true", projects=projects))
    try:
        await throttle.check_code(code)
    except TooManyRequests as exc:
        return _refusal(exc.message)
    claimant = Claimant(source, code, hardware_id)
    wait = await held_clone_rate(r, claimant, reported.secret_digest)
    if wait is not None:
        return _ok(refused(clone_rate_refusal(wait)))  # answered here: nothing published
    outcome = await register(r, _claim(r.keyring, claimant, reported), r.settings.compat.wait_seconds)
    await remember_clone_rate(throttle, source, code, outcome)
    if outcome.status == "pending" and outcome.hardware_id:
        # Reserved for the registration's hook (docs/registration-hook.md): step 2 answers as
        # without one (H, or H-N for a clone); step 5 is pending until the hook allowed.
        if outcome.clone:
            return _ok(answer("reset", ("HardwareId", outcome.hardware_id)))
        return _ok(answer("true", projects=projects))
    if outcome.status == "pending":
        return _ok(answer("pending", ("reason", PENDING)))
    if retry_later(outcome):
        return _ok(refused(clone_rate_refusal(outcome.retry_after or 1)))
    if outcome.status != "ready":
        return _refusal(outcome.reason)
    await count_new_device(throttle, code, outcome)
    if outcome.clone:
        return _ok(answer("reset", ("HardwareId", outcome.hardware_id)))
    return _ok(answer("true", projects=projects))


async def provisioning_file(pool: Pool, provisioning_id: str) -> bytes | None:
    """Step 3: the product-level provisioning file (``#begin`` and the 36-character ID
    first); None for an unknown ID. Per-device credentials come at step 5.

    The bulk service's file carries the Bulk Identification Code, so it is served
    only to a caller who presented that very code as the provisioning ID (the
    reference client does); asked by the bulk service's own ID (which native devices
    see in their manifest) it is unknown: no unauthenticated answer reveals a code
    the caller did not present, and after a rotation nothing reveals the new one.
    """
    found = await compat.service(pool, provisioning_id)
    if found is None:
        return None
    if found.is_bulk_service:
        presented = provisioning_id.strip().upper()
        if found.code is None or presented != found.code:
            return None
        shown_id = found.code
    else:
        shown_id = found.service_id.upper()
    lines = [
        "#begin",
        shown_id,
        f"application_type {found.type_code}",
        f"proxy_dest_port {found.port}",
        "proxy_dest_ip 127.0.0.1",
        "#end",
    ]
    return ("\n".join(lines) + "\n").encode("ascii")


async def service_configuration(pool: Pool, provisioning_id: str) -> Reply:
    """Step 4: whether and how the service is set up."""
    found = await compat.service(pool, provisioning_id)
    if found is None:
        return _refusal(UNKNOWN_ID)
    return _ok(
        answer(
            "true",
            ("timestamp", str(found.changed_epoch)),
            ("enabled", "1" if found.enabled else "0"),
            ("content_type", str(found.type_code)),
            ("content_port", str(found.port)),
            ("content_ip", "127.0.0.1"),
        )
    )


async def register_service(r: Intake, body: dict[str, Any], source: str) -> Reply:
    """Step 5: the service's UID and secret (the device secret for the bulk service).
    For bulk registration the first such call claims the device with its key, by the
    native API's rule (:func:`services.intake.handlers.hold_unproven_claim`): a claim of a
    listed hardware ID counts an attempt on its (address, code and hardware ID) pair
    before its key is evaluated, and past it, or from an address over its own limit
    without the right key, is told ``pending`` with the wait, nothing published.

    A service enabled after the device was provisioned gets its UID now, on this first
    ask (:func:`shared.db.files.complete_device_files`); a device that confirmed already
    gets it when it proved its device secret at step 1 (shared.domain.release)."""
    pool, keyring = r.pool, r.keyring
    found = await compat.service(pool, _text(body, "project_id"))
    if found is None or found.code is None:
        return _refusal(UNKNOWN_ID)
    if not found.enabled:
        return _refusal(SERVICE_DISABLED)
    native_only = await _native_only(r, found.code)
    if native_only is not None:
        return native_only
    try:
        hardware_id = validate_hardware_id(_text(body, "hardware_id"))
    except InvalidInput as exc:
        return _refusal(exc.message)
    reported = await compat.information(pool, found.code, hardware_id, source)
    key_digest = keyring.digest(_text(body, "registration_key").strip())  # trimmed as in the CSV
    device = await compat.device(pool, found.account_id, hardware_id, found.service_id)
    # A later service of the same boot (the caller's fingerprint and key, from an address
    # that claimed the device) is answered at once; any other caller's claim is decided by
    # deduplication, which notices a second address before "ready" (the security alert
    # two_sources_before_ready), as it does for the native API and auto registration.
    same_boot = (
        claimed_by(device, reported.fingerprint, key_digest)
        and device is not None
        and (source in device.claim_sources or not device.claim_sources)
    )
    if found.registration_kind == "bulk" and not same_boot:
        claimant = Claimant(source, found.code, hardware_id)
        held = await _held_claim(r, claimant, device, reported, key_digest)
        if held is not None:
            return held
        outcome = await register(
            r, _claim(keyring, claimant, reported, key_digest), r.settings.compat.wait_seconds
        )
        if outcome.status == "pending":
            return _ok(answer("pending", ("reason", PENDING)))
        if outcome.status != "ready":
            # Counted on the source only when "not listed": the claim of a listed hardware ID
            # counted on its (source, code and hardware ID) pair before it was published
            # (_held_claim), an unlisted one has no key to guess.
            return _refusal(outcome.reason)
        device = await compat.device(pool, found.account_id, hardware_id, found.service_id)
        if device is not None and not _current(keyring, outcome.device_secret, device):
            # A later claim (a reclaim before "ready") replaced this decision's credentials:
            # they are not this caller's to take; it asks again (every 30 s) and is decided anew.
            return _ok(answer("pending", ("reason", PENDING)))
    if device is None:
        return _refusal(REASON_BULK_NOT_LISTED if found.registration_kind == "bulk" else NOT_REGISTERED)
    proven = bool(reported.secret_digest) and hmac.compare_digest(
        reported.secret_digest,
        keyring.digest(keyring.device_secret(device.device_id, device.credential_generation)),
    )

    def verdict_for(device: compat.DeviceCredentials) -> Release:
        return service_secret_release(
            device,
            reported.fingerprint,
            device.files_ready,
            secret_proven=proven,
            bulk_service=found.is_bulk_service,
        )

    verdict = verdict_for(device)
    if verdict in REFUSALS:
        return _refusal(REFUSALS[verdict])
    if device.service_uid is None and device.provisioned_files:
        # Enabled since the device's files were rendered: its file and UID are made now.
        device = await _with_later_service(pool, keyring, device, found)
        verdict = verdict_for(device)
        if verdict in REFUSALS:
            return _refusal(REFUSALS[verdict])
    if verdict is Release.FILES_PENDING or device.service_uid is None:
        return _ok(answer("pending", ("reason", PENDING)))
    secret = (
        keyring.device_secret(device.device_id, device.credential_generation)
        if found.is_bulk_service
        else keyring.service_password(device.service_uid, device.credential_generation)
    )
    return _ok(answer("true", ("uid", device.service_uid), ("secret", secret)))


def _current(keyring: Keyring, decided_secret: str, device: compat.DeviceCredentials) -> bool:
    """Whether a decision's device secret (empty: superseded) is still ``device``'s own."""
    current = keyring.device_secret(device.device_id, device.credential_generation)
    return bool(decided_secret) and hmac.compare_digest(decided_secret.encode(), current.encode())


def slow_down(wait: int) -> str:
    """The protocol's words for a call held by the refusal limits (no key word, comma or quote)."""
    return f"too many refused calls from this address: try again in {wait} s"


async def _held_claim(
    r: Intake,
    claimant: Claimant,
    device: compat.DeviceCredentials | None,
    reported: Reported,
    key_digest: str,
) -> Reply | None:
    """Step 5's bulk claim, before it is published, by the native API's rule
    (:func:`services.intake.handlers.hold_unproven_claim`: a listed hardware ID's claims
    count on their (source, code and hardware ID) pair first, an unlisted one's make no
    pair): ``pending`` with the wait when it is held (the client asks again every 30 s),
    else None."""
    keyring = r.keyring
    secret_proven = (
        device is not None
        and bool(reported.secret_digest)
        and hmac.compare_digest(
            reported.secret_digest,
            keyring.digest(keyring.device_secret(device.device_id, device.credential_generation)),
        )
    )
    try:
        await hold_unproven_claim(
            r.throttle,
            claimant.source,
            BulkClaim(
                target_of("hardware", claimant.code, claimant.hardware_id.lower()),
                listed=device is not None,
                secret_proven=secret_proven,
                presented_key_digest=key_digest,
                listed_key_digest=device.registration_key_digest if device is not None else "",
            ),
        )
    except TooManyRequests as exc:
        return _ok(answer("pending", ("reason", slow_down(exc.retry_after))))
    return None


async def _with_later_service(
    pool: Pool, keyring: Keyring, device: compat.DeviceCredentials, found: compat.Service
) -> compat.DeviceCredentials:
    """``device`` once the files of services enabled since its provisioning are rendered,
    with its UID for ``found`` (still None if the device's files are not rendered yet)."""
    registered = await files.one_device_files(pool, device.device_id)
    if registered is not None:
        await files.complete_device_files(pool, keyring, registered)
    return await compat.device(pool, found.account_id, device.hardware_id, found.service_id) or device


async def ready(
    pool: Pool,
    keyring: Keyring,
    publish_signal: PublishSignal,
    body: dict[str, Any],
    stale_s: float = DEFAULT_STALE_CREDENTIAL_SECONDS,
) -> Reply:
    """Step 6: the device confirms, proving itself with its device secret. A secret the
    operator's reset replaced within ``stale_s`` is refused, not counted (not a guess)."""
    checked = _checked(_text(body, "BulkIdentificationCode"), _text(body, "HardwareId"))
    if isinstance(checked, str):
        return _refusal(checked)
    code, hardware_id = checked
    found = await compat.service(pool, code)
    device = await compat.device(pool, found.account_id, hardware_id, found.service_id) if found else None
    secret = _text(body, "DeviceSecret")
    matches = (
        device is not None
        and bool(secret)
        and keyring.digest(secret)
        == keyring.digest(keyring.device_secret(device.device_id, device.credential_generation))
    )
    check = secret_check(matches, device is not None and device.disabled)
    if check is Check.UNPROVEN or device is None:
        if device is not None and secret and await _replaced(pool, keyring, device, secret, stale_s):
            return _stale(NOT_REGISTERED)
        return _refusal(NOT_REGISTERED, target_of("device", device.device_id) if device else None)
    if check is Check.DISABLED:
        return _refusal(REASON_DISABLED)
    await publish_signal(
        hardware_id,
        DeviceSignal(
            device_id=device.device_id,
            kind="ready",
            at=time.time(),
            credential_generation=device.credential_generation,
        ),
    )
    return _ok(answer("true"))


async def _replaced(
    pool: Pool, keyring: Keyring, device: compat.DeviceCredentials, secret: str, stale_s: float
) -> bool:
    """Whether ``secret`` is the device's secret of an older credential generation that
    the operator's reset or move, or a reclaim before "ready", replaced within ``stale_s``
    seconds."""
    older = keyring.older_generation(device.device_id, device.credential_generation, secret)
    if older is None:
        return False
    return stale(
        await devices.credentials_replaced_at(pool, device.device_id, older), datetime.now(UTC), stale_s
    )
