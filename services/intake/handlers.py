"""The intake's business logic, free of HTTP and Kafka: the routes (routes.py) hand
each function the service's resources (:class:`Intake`, what it may use of them) and the
call's own values.

Both protocols' limits on registration calls are applied here, at this one layer: the
new-device limit per code (:meth:`Throttle.check_code` before anything is published,
:func:`count_new_device` after a new device or clone), the clone rate's wait and the
bounds on guessing a bulk key or reusing a revoked code. The HTTP middleware
(shared/throttle.py) only counts the refusals the handlers report and answers a blocked
source's next ones."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal, Protocol

from cryptography import x509

from services.intake import certificates
from services.intake.attestation import GroupKeyCache, NonceBook, check_certificate, check_proof
from services.intake.certificates import CertificateLimit, Issued, Issuer
from services.intake.code_cache import CodeCache
from services.intake.device_cache import DeviceCache
from services.intake.outcomes import OutcomeWaiter
from services.intake.settings import IntakeSettings
from shared.client_certs import ClientCertificate
from shared.db import bulk, decisions, devices, files, products
from shared.db.certificates import IssuingDevice
from shared.db.files import DeviceFiles, ServiceFile
from shared.db.pool import Pool
from shared.domain import derived_keys, x509_attestation
from shared.domain.admission import REASON_REVOKED_CODE, REASON_UNKNOWN_CODE
from shared.domain.credentials import DEFAULT_STALE_CREDENTIAL_SECONDS, Keyring, stale
from shared.domain.dedup import (
    REASON_BULK_NOT_LISTED,
    REASON_DELETED,
    REASON_DISABLED,
    is_clone_limit_refusal,
    is_clone_rate_refusal,
    is_quota_refusal,
)
from shared.domain.identifiers import (
    fingerprint_identifiers,
    is_uuid,
    new_request_id,
    normalize_code,
    request_id_age_seconds,
    request_id_is_issued,
    validate_hardware_id,
)
from shared.domain.provisioning import DataFile, render, sha256_hex
from shared.domain.refusals import ReasonCode
from shared.domain.release import Check, Release, secret_check, secret_release
from shared.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    TooManyRequests,
    Unauthorized,
    shortened,
)
from shared.events import DeviceSignal, RegistrationOutcome, RegistrationRequested, SignalKind
from shared.http import bearer, decode_json_object
from shared.metrics import THROTTLED, UNKNOWN_CODE_REFUSALS
from shared.throttle import Throttle, target_of

log = logging.getLogger(__name__)

TOKEN_MAX = 128
REGISTRATION_FIELDS = {
    "bulk_identification_code",
    "hardware_id",
    "fingerprint",
    "device_secret",
    "registration_key",
    "proof",
    "csr",
}
FINGERPRINT_FIELDS = {"cpu_id", "mac"}
PROOF_FIELDS = {"expires", "nonce", "mac"}
# The registration call's and poll's ``include`` query flag: the one value it takes.
INCLUDE_FILES = "files"
UNAUTHORIZED = "unknown device or wrong device secret"
# The realm of the device API's 401 challenges (WWW-Authenticate).
DEVICE_REALM = "fleetreg devices"
# Stale credentials (an old secret after the operator's reset, or a deleted device's):
# answered 401 saying so, and not counted against the caller's address.
CREDENTIALS_REPLACED = (
    "the device's credentials were replaced (the operator's reset for re-provisioning or "
    "move, or a new claim of the device before it confirmed): register again to get new ones"
)
DEVICE_DELETED = "the device was deleted by the operator: register again as a new device"
# Refusals of a registration call that count against the caller's address and what it
# guessed (shared/throttle.py): what a guesser of codes or registration keys gets. A code
# revoked by a rotation within the stale-credential window is stale, not a guess (a
# board still on the old image): not counted against the address, only on its own
# (source, revoked code) pair, before it is published, which bounds its writes
# (register_native; counted_refusal then leaves it alone).
# (A wrong device secret is a 401, counted by the throttling middleware.)
# The rule of a 429 of the clone rate per source (docs/device-api.md, "Limits"), and the
# limit fleetreg_throttled_total names for the claims the intake answers itself.
CLONE_RATE_RULE = "clone_rate_per_source"
# A missing, wrong or replayed proof of a derived key proved nothing: counted as a guess. A
# right proof refused only for its time (a device without a clock) is not.
COUNTED_REFUSALS = frozenset(
    {REASON_UNKNOWN_CODE, REASON_REVOKED_CODE, REASON_BULK_NOT_LISTED} | derived_keys.PROOF_REASONS_COUNTED
)
_PROOF_REFUSALS = {
    "no_proof": derived_keys.REASON_NO_PROOF,
    "wrong": derived_keys.REASON_WRONG_PROOF,
    "replayed": derived_keys.REASON_REPLAYED_PROOF,
    "time": derived_keys.REASON_PROOF_TIME,
}


def retry_later(answer: Answer) -> bool:
    """Whether a refusal is for now only (the clone rate per source): answered 429 with
    Retry-After, also when it is polled (the stored decision keeps the reason, not the wait)."""
    return answer.status == "refused" and (answer.retry_after > 0 or is_clone_rate_refusal(answer.reason))


# Publishes a device's signal: the hardware ID it is keyed by (shared.kafka.PUBLICATIONS:
# the device's hardware-ID stem, which the event does not carry), and the signal.
PublishSignal = Callable[[str, DeviceSignal], Awaitable[None]]


class Intake(Protocol):
    """What the handlers use of the intake's resources: the registry, the caches, the
    outcome waiter, the throttle, the settings, and the publishing of a registration
    request to its declared topic and key. ``services.intake.resources.Resources`` is one,
    opened once per app; it carries no HTTP object, so the handlers stay free of aiohttp (a
    Protocol, because the resources sit above the handlers in the service's layers)."""

    @property
    def settings(self) -> IntakeSettings: ...

    @property
    def pool(self) -> Pool: ...

    @property
    def keyring(self) -> Keyring: ...

    @property
    def waiter(self) -> OutcomeWaiter: ...

    @property
    def devices(self) -> DeviceCache: ...

    @property
    def codes(self) -> CodeCache: ...

    @property
    def throttle(self) -> Throttle: ...

    @property
    def group_keys(self) -> GroupKeyCache: ...

    @property
    def nonces(self) -> NonceBook: ...

    @property
    def issuer(self) -> Issuer: ...

    async def publish_request(self, event: RegistrationRequested) -> None: ...


@dataclass(frozen=True)
class Claimant:
    """Who claims what: the caller's ``source`` (shared.throttle.request_source), the
    Bulk Identification Code (canonical) and the hardware ID it claims."""

    source: str
    code: str
    hardware_id: str


@dataclass(frozen=True)
class BulkClaim:
    """What a bulk claim of a hardware ID shows before it is published
    (:func:`hold_unproven_claim`): ``target``, its (source, target) bucket (the code and
    hardware ID: :func:`shared.throttle.target_of`); whether the hardware ID is ``listed``
    in the code's product; whether the device's current secret proved the call; the keyed
    digests of the presented registration key and of the listed one ("" for none)."""

    target: str
    listed: bool
    secret_proven: bool
    presented_key_digest: str
    listed_key_digest: str


@dataclass(frozen=True)
class RegistrationInput:
    bulk_identification_code: str
    hardware_id: str
    cpu_id: str = ""
    mac: str = ""
    device_secret: str = ""
    registration_key: str = ""
    idempotency_key: str = ""
    proof: derived_keys.Proof | None = None  # of a derived key (docs/device-identity.md)
    csr: x509.CertificateSigningRequest | None = None  # checked: a certificate is asked for
    # The client certificate the call presented (shared.client_certs), and whether it
    # attested the claimed hardware ID (an x509 registration: set by :func:`attest`).
    client_certificate: ClientCertificate | None = None
    attested: bool = False


@dataclass(frozen=True)
class InlineFile:
    """One provisioning file of a two-call boot: its manifest entry and its content,
    rendered and checked as the per-file download renders and checks it."""

    file: ServiceFile
    content: bytes


@dataclass(frozen=True)
class Boot:
    """What a ``ready`` answer with ``include=files`` carries: the manifest and every file."""

    device: AuthenticatedDevice
    files: tuple[InlineFile, ...]
    # The enrichment data file (its content is its own), listed after the services' files.
    data: DataFile | None = None


@dataclass(frozen=True)
class Answer:
    """The answer to a registration call or poll, before it is shaped for a protocol."""

    status: Literal["ready", "refused", "pending", "unknown"]
    request_id: str
    reason: str = ""
    device_id: str = ""
    hardware_id: str = ""
    claimed_hardware_id: str = ""
    decision: str = ""
    device_secret: str = ""
    boot: Boot | None = None  # only with include=files, only beside the device secret
    retry_after: int = 0  # a refusal for now: seconds to wait before claiming again
    # Answered by the intake itself past a limit (nothing published): not counted again.
    held: bool = False
    # A proof refused only for its time: the server's clock (Unix seconds) for the device.
    server_time: int = 0
    certificate: Issued | None = None  # only with a CSR, only beside the device secret
    # Of an outcome just decided (not of a poll): what issuing a certificate needs, so that
    # it reads nothing more than its conditional record (services/intake/certificates.py).
    account_id: str = ""
    credential_generation: int = 0

    @property
    def clone(self) -> bool:
        # Case-insensitive: hardware IDs are unique case-insensitively, so a claim of
        # "de01" answered with the registered "DE01" is the same ID, not a clone.
        return bool(self.hardware_id) and self.hardware_id.lower() != self.claimed_hardware_id.lower()


def _token(value: object, field: str) -> str:
    """An optional short printable-ASCII string (a secret, key, identifier)."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string", field=field, rule="type=string")
    if len(value) > TOKEN_MAX:
        raise InvalidInput(
            f"{field} is longer than {TOKEN_MAX} characters", field=field, rule=f"max_length={TOKEN_MAX}"
        )
    if not value.isascii() or not value.isprintable():
        raise InvalidInput(f"{field} may hold only printable ASCII", field=field, rule="charset=ascii")
    return value


def _stripped(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


def parse_registration(body: bytes, idempotency_key: str | None) -> RegistrationInput:
    """Validate a native registration call; raise InvalidInput naming the field and rule."""
    data = decode_json_object(body)
    unknown = sorted(set(data) - REGISTRATION_FIELDS)
    if unknown:
        name = shortened(unknown[0])
        raise InvalidInput(f"unknown field {name!r}", field=name, rule="known_fields")
    fingerprint = data.get("fingerprint") or {}
    if not isinstance(fingerprint, dict):
        raise InvalidInput(
            "fingerprint must be an object with cpu_id and mac", field="fingerprint", rule="type=object"
        )
    unknown = sorted(set(fingerprint) - FINGERPRINT_FIELDS)
    if unknown:
        raise InvalidInput(
            f"unknown field fingerprint.{shortened(unknown[0])}",
            field=f"fingerprint.{shortened(unknown[0])}",
            rule="known_fields",
        )
    return RegistrationInput(
        bulk_identification_code=normalize_code(data.get("bulk_identification_code")),
        hardware_id=validate_hardware_id(data.get("hardware_id")),
        cpu_id=_token(fingerprint.get("cpu_id"), "fingerprint.cpu_id"),
        mac=_token(fingerprint.get("mac"), "fingerprint.mac"),
        device_secret=_token(data.get("device_secret"), "device_secret"),
        # Trimmed as the CSV trims it: a key read from a file may end in a line break.
        registration_key=_token(_stripped(data.get("registration_key")), "registration_key"),
        idempotency_key=_token(idempotency_key, "Idempotency-Key"),
        proof=parse_proof(data.get("proof")),
        csr=parse_csr_field(data.get("csr")),
    )


class MalformedProof(InvalidInput):
    """A ``proof`` that is not one (400 naming the field): a failed attempt to prove a
    device key, counted against the caller's source like a wrong proof
    (services/intake/routes.py ``refusals_counted``), so a flood of them is 429."""


def parse_proof(value: object) -> derived_keys.Proof | None:
    """A registration call's ``proof`` of a derived key: ``{"expires": Unix seconds,
    "nonce": 16-64 hex digits, "mac": hex}`` (docs/device-identity.md), or None when absent
    or ``null``: null is no proof, as it is for every optional field of the body
    (``fingerprint``, ``device_secret``, ``registration_key``, ``csr``), so a client that
    writes its unset fields as null still registers in ``code`` mode, and in ``derived_key``
    mode is refused 403 "send proof" and counted exactly as an absent proof. A malformed one
    is MalformedProof (400) naming the field and its rule; a MAC of the wrong length is
    taken (it is a wrong proof, refused and counted as one)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MalformedProof(
            "proof must be an object with expires, nonce and mac", field="proof", rule="type=object"
        )
    unknown = sorted(set(value) - PROOF_FIELDS)
    if unknown:
        name = f"proof.{shortened(unknown[0])}"
        raise MalformedProof(f"unknown field {name}", field=name, rule="known_fields")
    expires = value.get("expires")
    if (
        not isinstance(expires, int)
        or isinstance(expires, bool)
        or not 0 <= expires <= derived_keys.EXPIRES_MAX
    ):
        raise MalformedProof(
            "proof.expires must be a whole number of seconds since 1970",
            field="proof.expires",
            rule=f"range=0..{derived_keys.EXPIRES_MAX}",
        )
    nonce = value.get("nonce")
    if not isinstance(nonce, str) or derived_keys.NONCE_PATTERN.fullmatch(nonce) is None:
        raise MalformedProof(
            "proof.nonce must be 16-64 hex digits", field="proof.nonce", rule="pattern=hex{16,64}"
        )
    mac = value.get("mac")
    # The rule says what is wrong (an empty or integer mac was reported as too long).
    if mac is None:
        raise MalformedProof("proof.mac is required: the MAC in hex", field="proof.mac", rule="required")
    if not isinstance(mac, str):
        raise MalformedProof(
            "proof.mac must be a string: the MAC in hex", field="proof.mac", rule="type=string"
        )
    if not mac:
        raise MalformedProof(
            "proof.mac is empty: send the MAC in hex", field="proof.mac", rule="min_length=1"
        )
    if len(mac) > derived_keys.MAC_MAX_LENGTH:
        raise MalformedProof(
            f"proof.mac is longer than {derived_keys.MAC_MAX_LENGTH} characters: send the MAC in hex",
            field="proof.mac",
            rule=f"max_length={derived_keys.MAC_MAX_LENGTH}",
        )
    if not mac.isascii() or not mac.isalnum():
        raise MalformedProof("proof.mac must be the MAC in hex", field="proof.mac", rule="charset=hex")
    return derived_keys.Proof(expires, nonce, mac.lower())


def parse_csr_field(value: object) -> x509.CertificateSigningRequest | None:
    """A call's ``csr`` (PEM or base64 DER), checked (services.intake.certificates.checked_csr:
    CsrRefused, 400); None when absent."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput("csr must be a string (PEM or base64 DER)", field="csr", rule="type=string")
    return certificates.checked_csr(value)


def parse_include(values: list[str]) -> bool:
    """The ``include`` query flag of a registration call or poll: absent, or ``files``
    once (the answer then carries the manifest and the files inline); anything else is
    refused rather than ignored, so that a device asking for more learns it at once."""
    if not values:
        return False
    if len(values) > 1 or values[0] != INCLUDE_FILES:
        raise InvalidInput(
            f"include takes one value, {INCLUDE_FILES!r}", field="include", rule=f"enum={INCLUDE_FILES}"
        )
    return True


def to_event(
    registration: RegistrationInput, keyring: Keyring, protocol: str, source: str = ""
) -> RegistrationRequested:
    """The request as it travels: secrets replaced by their keyed digests; ``source`` is
    where the call came from (shared.throttle.request_source)."""
    return RegistrationRequested(
        request_id=new_request_id(keyring.request_tag),
        received_at=time.time(),
        bulk_identification_code=registration.bulk_identification_code,
        hardware_id=registration.hardware_id,
        # Placeholders (an unprogrammed MAC, a CPU ID of zeros) are no value: boards of one
        # image reporting only those have no fingerprint and are told apart by their
        # Idempotency-Key (clones), never merged into one device.
        fingerprint=keyring.fingerprint(*fingerprint_identifiers(registration.cpu_id, registration.mac)),
        secret_digest=keyring.digest(registration.device_secret),
        registration_key_digest=keyring.digest(registration.registration_key),
        idempotency_key=registration.idempotency_key,
        protocol=protocol,
        source=source,
        attested=registration.attested,
    )


def _from_outcome(outcome: RegistrationOutcome, claimed: str, keyring: Keyring) -> Answer:
    if outcome.status == "pending":
        # The registration's hook failed and its policy is fail closed: pending at once,
        # with the wait it asks for (docs/registration-hook.md).
        # A reference-protocol claim's provisional answer carries its device and H-N.
        return Answer(
            "pending",
            outcome.request_id,
            device_id=outcome.device_id,
            hardware_id=outcome.hardware_id,
            claimed_hardware_id=claimed,
            decision=outcome.decision,
            retry_after=outcome.retry_after,
        )
    if outcome.status != "ready":
        return Answer(
            "refused",
            outcome.request_id,
            reason=outcome.reason,
            claimed_hardware_id=claimed,
            retry_after=outcome.retry_after,
        )
    return Answer(
        "ready",
        outcome.request_id,
        device_id=outcome.device_id,
        hardware_id=outcome.hardware_id,
        claimed_hardware_id=claimed,
        decision=outcome.decision,
        # Only a decision of the device's current credentials carries its secret (as a poll:
        # _poll's ``superseded``): of claims handled together, the last one's.
        device_secret=""
        if outcome.superseded
        else keyring.device_secret(outcome.device_id, outcome.credential_generation),
        account_id=outcome.account_id,
        credential_generation=outcome.credential_generation,
    )


async def code_known(pool: Pool, codes: CodeCache, code: str, protocol: str) -> bool:
    """Whether the registry knows ``code`` (current or revoked), through the intake's
    cache of codes (services/intake/code_cache.py). An unknown code is counted
    (fleetreg_unknown_code_refusals_total and the minute's summary): the caller refuses
    the call itself, with nothing published and nothing written."""
    known = await codes.known(code, lambda c: products.known_code(pool, c))
    if not known:
        UNKNOWN_CODE_REFUSALS.labels(protocol).inc()
        codes.refused()
    return known


async def register_native(
    r: Intake, registration: RegistrationInput, source: str, *, include_files: bool = False
) -> Answer:
    """A native registration call, validated: publish it (secrets as keyed digests, with the
    caller's ``source``) and wait a bounded time (FLEETREG_OUTCOME_WAIT_SECONDS) for its
    outcome; with ``include_files``, a ``ready`` answer also carries the device's files
    (:func:`with_files`).

    First the code's new-device limit (FLEETREG_LIMIT_NEW_DEVICES_PER_CODE): TooManyRequests
    (429) while its window is full; a call answered with a new device or a clone counts in
    it (:func:`count_new_device`). A code the registry does not know is refused here,
    without a request published or a row written: the answer is the one deduplication
    gives (``refused``, a fresh request ID, the same reason), so a device sees no
    difference. A known code costs one registry read (:func:`shared.db.bulk.code_claim`;
    none for an auto product's current code the code cache remembers as such) that says
    what is counted BEFORE anything is published, atomically, so that a concurrent burst
    gets no more than the allowance through: a revoked code's call counts on its (source,
    revoked code) pair and past it is answered the same 403 here, no pipeline trip and no
    decision row (:func:`held_revoked`); a bulk claim of a listed hardware ID counts on its
    (source, code and hardware ID) pair and past it is refused 429 before its key is
    evaluated (:func:`guard_bulk_claim`; TooManyRequests, nothing published, unless it
    proves itself)."""
    code = registration.bulk_identification_code
    throttle = r.throttle
    await throttle.check_code(code)
    if not await code_known(r.pool, r.codes, code, "native"):
        return Answer(
            "refused",
            new_request_id(r.keyring.request_tag),
            reason=REASON_UNKNOWN_CODE,
            claimed_hardware_id=registration.hardware_id,
        )
    if held_revoked(throttle, source, code):
        return _held_revoked_answer(r.keyring, registration)
    attested = await attest(r, registration)
    if isinstance(attested, Answer):
        return attested
    registration = attested
    # An auto product's current code has nothing counted before publishing: remembered,
    # its boot storm costs no read here.
    generation = r.codes.generation
    claim = None if r.codes.is_auto(code) else await bulk.code_claim(r.pool, code, registration.hardware_id)
    if claim is not None and claim.auto:
        r.codes.put_auto(code, generation)
    if (
        claim is not None
        and claim.revoked
        and await throttle.attempt(source, revoked_target(code)) is not None
    ):
        return _held_revoked_answer(r.keyring, registration)
    if claim is not None and claim.evidence is not None:
        await guard_bulk_claim(r, registration, source, claim.evidence)
    wait = await held_clone_rate(
        r, Claimant(source, code, registration.hardware_id), r.keyring.digest(registration.device_secret)
    )
    if wait is not None:
        return Answer(
            "refused",
            new_request_id(r.keyring.request_tag),
            reason=throttle.clone_rate_reason or HELD_CLONE_RATE,
            claimed_hardware_id=registration.hardware_id,
            retry_after=wait,
            held=True,
        )
    event = to_event(registration, r.keyring, protocol="native", source=source)
    answer = await register(r, event, r.settings.outcome_wait_seconds)
    await remember_clone_rate(throttle, source, code, answer)
    if include_files:
        answer = await with_files(r.pool, r.keyring, answer, r.devices)
    if registration.csr is not None:
        answer = await with_certificate(r, answer, registration.csr)
    await count_new_device(throttle, code, answer)
    return answer


async def attest(r: Intake, registration: RegistrationInput) -> Answer | RegistrationInput:
    """The refusal of a claim whose code's auto registration takes derived keys or X.509
    certificates and which does not prove its hardware ID (services/intake/attestation.py),
    or the registration to go on with (for x509, marked ``attested``). Nothing is published
    for a refused one; its reason says which: a missing, wrong or replayed proof and every
    certificate refusal count against the caller (:func:`counted_refusal`), a right proof
    out of its time does not and carries ``server_time``."""
    found = await r.group_keys.of_code(r.pool, registration.bulk_identification_code)
    if found.attestation == "x509":
        now_utc = datetime.now(UTC)
        reason = check_certificate(found, registration.hardware_id, registration.client_certificate, now_utc)
        if reason is None:
            return replace(registration, attested=True)
        return Answer(
            "refused",
            new_request_id(r.keyring.request_tag),
            reason=reason,
            claimed_hardware_id=registration.hardware_id,
        )
    if found.attestation != "derived_key":
        return registration
    now = time.time()
    checked = await check_proof(r.nonces, found, registration.hardware_id, registration.proof, now)
    if checked == "proven":
        return registration
    return Answer(
        "refused",
        new_request_id(r.keyring.request_tag),
        reason=_PROOF_REFUSALS[checked],
        claimed_hardware_id=registration.hardware_id,
        server_time=int(now) if checked == "time" else 0,
    )


async def with_certificate(r: Intake, answer: Answer, csr: x509.CertificateSigningRequest) -> Answer:
    """A ``ready`` answer carrying the device secret also carries the certificate of the
    CSR's key, signed by the account's issuing CA for the device's credentials of that
    secret (no secret in the answer, no certificate: the device asks later with its
    secret, POST /v1/devices/{id}/certificate)."""
    if answer.status != "ready" or not answer.device_secret:
        return answer
    secret = answer.device_secret.encode()

    def proven(generation: int) -> bool:
        return hmac.compare_digest(r.keyring.device_secret(answer.device_id, generation).encode(), secret)

    # The outcome names the device's account, assigned ID and credential generation: no read
    # before signing (the record is conditional on them and on the device being enabled).
    known = (
        IssuingDevice(answer.account_id, "", answer.hardware_id, False, answer.credential_generation)
        if answer.account_id and answer.credential_generation
        else None
    )
    try:
        issued = await certificates.issue(
            r.pool, r.issuer, answer.device_id, csr, proven, via="registration", known=known
        )
    except Forbidden:  # disabled or reset since it was decided: the answer goes out without one
        return answer
    except CertificateLimit:  # a retry past the cap: the device asks later and is told why
        return answer
    return replace(answer, certificate=issued)


async def device_certificate(
    r: Intake, device: AuthenticatedDevice, csr: x509.CertificateSigningRequest, *, via: str = "native"
) -> Issued:
    """Issue a certificate of the CSR's key to the proven ``device`` (a renewal is the same
    call): Forbidden (403) when it was disabled, reset or deleted since it was proven;
    CertificateLimit (409) when it holds FLEETREG_MAX_CERTIFICATES_PER_DEVICE unexpired
    certificates."""
    return await certificates.issue(
        r.pool, r.issuer, device.id, csr, lambda g: g == device.credential_generation, via=via
    )


async def current_certificate(r: Intake, device: AuthenticatedDevice) -> Issued:
    """The proven device's current certificate; NotFound (404) when it has none."""
    return await certificates.current(r.pool, r.issuer, device.id)


async def count_new_device(throttle: Throttle, code: str, answer: Answer) -> None:
    """Count a call answered with a new device or a clone in its code's new-device window
    (:meth:`Throttle.count_new_device`; the limit is checked before publishing, by
    :meth:`Throttle.check_code`): the same for both protocols."""
    if answer.decision in ("new", "clone"):
        await throttle.count_new_device(code)


def _held_revoked_answer(keyring: Keyring, registration: RegistrationInput) -> Answer:
    return Answer(
        "refused",
        new_request_id(keyring.request_tag),
        reason=REASON_REVOKED_CODE,
        claimed_hardware_id=registration.hardware_id,
        held=True,
    )


# A claim answered by the intake from a clone-rate refusal's wait (held_clone_rate) says what
# deduplication's last such refusal said here (Throttle.clone_rate_reason); on an instance
# that learned the wait from another one only, the clone rate's words without the limit.
HELD_CLONE_RATE = "too many new devices with this hardware ID from this address: try again after Retry-After"


async def held_clone_rate(r: Intake, claimant: Claimant, secret_digest: str) -> int | None:
    """Seconds the ``claimant``'s claim (its hardware ID with its code from its source) must still wait after
    deduplication refused that source by the clone rate per source
    (:meth:`Throttle.clone_rate_wait`, learned from every instance), or None to publish it.
    While it waits, the caller answers the same 429 itself: no pipeline trip, no decision row.
    A claim presenting the current secret (``secret_digest``, keyed; "" for none) of the
    code's device with that hardware ID is an existing device, never refused by the clone
    rate: it goes through (one indexed read, only for a held claim carrying a secret).
    Counted in ``fleetreg_throttled_total{limit="clone_rate_per_source"}``."""
    wait = r.throttle.clone_rate_wait(claimant.source, claimant.code, claimant.hardware_id)
    if wait is None:
        return None
    if secret_digest:
        found = await devices.claimed_device(r.pool, claimant.code, claimant.hardware_id)
        if found is not None and r.keyring.device_secret_matches(*found, secret_digest):
            return None
    THROTTLED.labels(r.throttle.service, CLONE_RATE_RULE).inc()
    return wait


async def remember_clone_rate(throttle: Throttle, source: str, code: str, answer: Answer) -> None:
    """After deduplication's answer: a clone-rate refusal's wait is held for its (source,
    code and claimed hardware ID), on every instance (:meth:`Throttle.hold_clone_rate`).
    Losing the announcement only costs pipeline trips, so an unreachable registry is logged."""
    if not (retry_later(answer) and answer.retry_after > 0 and not answer.held):
        return
    throttle.clone_rate_reason = answer.reason
    try:
        await throttle.hold_clone_rate(source, code, answer.claimed_hardware_id, answer.retry_after)
    except Exception:  # the 429 stands; its next claims are decided by deduplication again
        log.warning("clone-rate wait not announced: the registry is unreachable")


def revoked_target(code: str) -> str:
    """The (source, target) bucket of a revoked code's refusals: the target kind of its own,
    so that a board on the old image never counts against its address, and its writes are
    still bounded per address and code."""
    return target_of("revoked", code)


def held_revoked(throttle: Throttle, source: str, code: str) -> bool:
    """Whether a claim with ``code`` from ``source`` is answered the revoked code's 403 by
    the intake itself: the (source, revoked code) pair is over its refusal limit (only a
    revoked code's refusals are counted there; a rotation is never undone). Counted in
    ``fleetreg_throttled_total{limit="refusals_per_target"}``."""
    if not throttle.blocked(source, revoked_target(code))[1]:
        return False
    THROTTLED.labels(throttle.service, "refusals_per_target").inc()
    return True


# Placeholders of a digest's length that match nothing: a claim without a key, or a hardware
# ID not listed, is compared as a wrong key is (the same path and work: no oracle).
_NO_KEY = "0" * 64
_NO_ROW = "1" * 64


async def guard_bulk_claim(
    r: Intake, registration: RegistrationInput, source: str, evidence: bulk.ClaimEvidence
) -> None:
    """The bound on guessing a bulk registration key (operator-chosen keys may be weak, a
    4-digit PIN) on the native API, for a claim with a current bulk code and what the
    registry has for it (``evidence``: :func:`shared.db.bulk.code_claim`, read once
    per claim): :func:`hold_unproven_claim` decides, before anything is published.
    TooManyRequests (429), nothing published and no decision row, when it holds it."""
    code = registration.bulk_identification_code
    secret_proven = False
    if registration.device_secret and evidence.device_id:
        expected = r.keyring.device_secret(evidence.device_id, evidence.credential_generation)
        secret_proven = hmac.compare_digest(expected.encode(), registration.device_secret.encode())
    await hold_unproven_claim(
        r.throttle,
        source,
        BulkClaim(
            target_of("hardware", code, registration.hardware_id.lower()),
            listed=bool(evidence.device_id),
            secret_proven=secret_proven,
            presented_key_digest=r.keyring.digest(registration.registration_key),
            listed_key_digest=evidence.registration_key_digest,
        ),
    )


async def hold_unproven_claim(throttle: Throttle, source: str, claim: BulkClaim) -> None:
    """A bulk ``claim`` of a hardware ID (its ``target``: its code and hardware ID), decided before
    any pipeline trip; returns when the claim is to be published and decided as usual,
    else raises TooManyRequests (429, ``Retry-After`` the wait of the bucket that held it):

    * the device's current secret (``secret_proven``) proves the call: high entropy, so it
      is checked first, whatever the address did, and counted nowhere;
    * a hardware ID ``listed`` in the code's product: every claim of it counts one attempt
      in its (source, ``target``) bucket FIRST, atomically (:meth:`Throttle.attempt`,
      the limits of FLEETREG_LIMIT_REFUSALS_PER_TARGET, right key or wrong: a board
      needs one or two); past it the claim is refused before its key is evaluated, with
      that bucket's wait. Within it, from a source over its own limit, the keyed digest of
      the presented key is compared here with the row's (``listed_key_digest``, "" for a
      device without a key): the right key returns, a wrong one is refused with the
      source's wait, nothing published;
    * an unlisted hardware ID has no key to guess: no (source, ``target``) bucket is made
      for it. From a source over its limit it is refused with the source's wait, after
      the same one registry read as a wrong key (no oracle); else it is published
      (deduplication refuses it "not listed", counted on the source after its answer).
    """
    if claim.secret_proven:
        return
    if claim.listed:
        wait = await throttle.attempt(source, claim.target)
        if wait is not None:
            raise TooManyRequests(
                "too many claims of this hardware ID from this address: slow down and try again later",
                retry_after=wait,
                rule="refusals_per_target",
                reason_code=ReasonCode.THROTTLED,
            )
    if not throttle.blocked(source)[0]:
        return
    presented = claim.presented_key_digest or _NO_KEY
    expected = (claim.listed_key_digest if claim.listed else "") or _NO_ROW
    if hmac.compare_digest(presented.encode(), expected.encode()):
        return
    throttle.check_source(source)
    # The block ended in between (a window's last moment): held all the same, not published.
    raise TooManyRequests(
        "too many refused calls from this address: slow down and try again later",
        retry_after=1,
        rule="refusals_per_source",
        reason_code=ReasonCode.THROTTLED,
    )


async def register(r: Intake, event: RegistrationRequested, wait_seconds: float) -> Answer:
    """Publish the request and wait ``wait_seconds`` for its outcome; else answer pending."""
    future = r.waiter.expect(event.request_id)
    try:
        await r.publish_request(event)
        outcome = await asyncio.wait_for(asyncio.shield(future), timeout=wait_seconds)
    except TimeoutError:
        return Answer("pending", event.request_id, claimed_hardware_id=event.hardware_id)
    finally:
        r.waiter.forget(event.request_id)
    return _from_outcome(outcome, event.hardware_id, r.keyring)


async def poll(
    pool: Pool,
    keyring: Keyring,
    request_id: str,
    forget_after: float,
    *,
    include_files: bool = False,
    cache: DeviceCache | None = None,
) -> Answer:
    """The outcome of an earlier request, as the registry has it now; with
    ``include_files``, a ``ready`` answer also carries the device's files (:func:`with_files`)."""
    answer = await _poll(pool, keyring, request_id, forget_after)
    return await with_files(pool, keyring, answer, cache) if include_files else answer


async def _poll(pool: Pool, keyring: Keyring, request_id: str, forget_after: float) -> Answer:
    age = request_id_age_seconds(request_id)
    if age is None:
        raise InvalidInput(
            "request_id is not a request ID issued by this service", field="request_id", rule="format=uuid7"
        )
    if not request_id_is_issued(request_id, keyring.request_tag):
        # Never issued here (or issued before request IDs carried a tag): nothing to wait for.
        return Answer("unknown", request_id, reason="no such registration request")
    found = await decisions.outcome(pool, request_id)
    if found is None or found.status == "decided":
        if found is None and age > forget_after:
            return Answer("unknown", request_id, reason="no such registration request")
        return Answer("pending", request_id)
    if found.status == "refused" or found.device_id is None:
        return Answer(
            "refused",
            request_id,
            # A decision whose device was deleted since keeps its own reason ("first
            # device with this hardware ID"): the answer says what happened instead.
            reason=found.reason if found.status == "refused" else REASON_DELETED,
            claimed_hardware_id=found.claimed_hardware_id,
        )
    # The secret is handed out again only until the device confirmed its provisioning, and
    # only for a decision of the device's current credentials: after an operator reset a
    # request ID from before it is answered without the new secret (or files).
    secret = (
        keyring.device_secret(found.device_id, found.credential_generation)
        if secret_release(found.device_lifecycle, found.device_disabled) is Release.GRANTED
        and not found.superseded
        else ""
    )
    return Answer(
        "ready",
        request_id,
        device_id=found.device_id,
        hardware_id=found.assigned_hardware_id or "",
        claimed_hardware_id=found.claimed_hardware_id,
        decision=found.decision,
        device_secret=secret,
    )


@dataclass(frozen=True)
class AuthenticatedDevice:
    """An authenticated device with its current provisioning files."""

    id: str
    hardware_id: str
    name: str
    lifecycle: str
    credential_generation: int
    files: tuple[ServiceFile, ...]
    registry: DeviceFiles


def bearer_token(authorization: str | None) -> str:
    """The device secret of an ``Authorization: Bearer`` header; Unauthorized (401) without
    one (not counted against the caller when no header was sent at all)."""
    secret = bearer(authorization)
    if secret is None:
        raise Unauthorized(
            "send the device secret as 'Authorization: Bearer <device secret>'",
            field="Authorization",
            rule="bearer",
            realm=DEVICE_REALM,
            presented=bool(authorization and authorization.strip()),
            reason_code=ReasonCode.UNAUTHORIZED,
        )
    if not secret.isascii():  # device secrets are hex; other bytes cannot match (and cannot be encoded)
        raise Unauthorized(UNAUTHORIZED, realm=DEVICE_REALM, reason_code=ReasonCode.UNAUTHORIZED)
    return secret


async def authenticate(
    pool: Pool,
    keyring: Keyring,
    device_id: str,
    authorization: str | None,
    cache: DeviceCache,
    stale_seconds: float = DEFAULT_STALE_CREDENTIAL_SECONDS,
) -> AuthenticatedDevice:
    """The device whose secret the ``Authorization: Bearer`` header carries; Unauthorized
    (401), the same whether the ID or the secret is wrong; Forbidden (403) when disabled.

    A secret replaced within ``stale_seconds`` (an older credential generation after the
    operator's reset or move or a reclaim before "ready", or the secret of a deleted
    device) is a 401 that says so (``credentials_replaced``, ``device_deleted``) and is
    not counted against the caller
    (:attr:`Unauthorized.counted`): a stale board is not a guesser.

    Once the device is proven, the files of services enabled or changed since it was
    provisioned are rendered (:func:`shared.db.files.complete_device_files`): the device
    sees them in its manifest at its next boot, without a reset."""
    secret = bearer_token(authorization)
    # One spelling of the ID for the registry's answer, the cache and its invalidations
    # (``device:<lower-case id>``): an entry kept under another case would never be dropped.
    device_id = device_id.lower()
    generation = cache.generation  # before any read: see DeviceCache.put
    found = cache.get(device_id)
    if found is None:
        found = await _read_device(pool, device_id, cache) if is_uuid(device_id) else None
    if found is None:
        keyring.device_secret(device_id, 1)  # same work either way: no timing hint
        if is_uuid(device_id):
            await _refuse_if_deleted(pool, keyring, device_id, secret, stale_seconds)
        raise Unauthorized(UNAUTHORIZED, realm=DEVICE_REALM, reason_code=ReasonCode.UNAUTHORIZED)
    expected = keyring.device_secret(found.device_id, found.credential_generation)
    check = secret_check(hmac.compare_digest(expected.encode(), secret.encode()), found.disabled)
    if check is Check.UNPROVEN:
        await _refuse_if_replaced(pool, keyring, found, secret, stale_seconds)
        raise Unauthorized(UNAUTHORIZED, realm=DEVICE_REALM, reason_code=ReasonCode.UNAUTHORIZED)
    if check is Check.DISABLED:
        raise Forbidden(REASON_DISABLED, reason_code=ReasonCode.DISABLED)
    return _device(await _completed(pool, keyring, found, cache, generation))


async def _refuse_if_replaced(
    pool: Pool, keyring: Keyring, found: DeviceFiles, secret: str, stale_seconds: float
) -> None:
    """Raise the stale 401 when ``secret`` is the device's secret of an older credential
    generation that the operator's reset or move, or a reclaim before "ready", replaced
    within ``stale_seconds``."""
    older = keyring.older_generation(found.device_id, found.credential_generation, secret)
    if older is None:
        return
    replaced_at = await devices.credentials_replaced_at(pool, found.device_id, older)
    if stale(replaced_at, datetime.now(UTC), stale_seconds):
        raise Unauthorized(
            CREDENTIALS_REPLACED,
            realm=DEVICE_REALM,
            counted=False,
            code="credentials_replaced",
            reason_code=ReasonCode.CREDENTIALS_REPLACED,
        )


async def _refuse_if_deleted(
    pool: Pool, keyring: Keyring, device_id: str, secret: str, stale_seconds: float
) -> None:
    """Raise the stale 401 when ``secret`` is a secret of a device the operator deleted
    within ``stale_seconds`` (remembered in ``deleted_devices``)."""
    deleted = await devices.deleted_device(pool, device_id)
    if deleted is None:
        return
    if keyring.older_generation(device_id, deleted.credential_generation + 1, secret) is None:
        return
    if stale(deleted.deleted_at, datetime.now(UTC), stale_seconds):
        raise Unauthorized(
            DEVICE_DELETED,
            realm=DEVICE_REALM,
            counted=False,
            code="device_deleted",
            reason_code=ReasonCode.DEVICE_DELETED,
        )


@dataclass(frozen=True)
class Counted:
    """How a refused call is counted: on the (source, ``target``) bucket, and on the
    source's own bucket unless ``per_source`` is False (a stale revoked code)."""

    target: str | None
    per_source: bool = True


async def counted_refusal(
    pool: Pool, registration: RegistrationInput, answer: Answer, stale_seconds: float
) -> Counted | None:
    """How a refused registration call is counted (what it guessed, for its (source,
    target) count: :func:`shared.throttle.target_of`), or None when the answer is not
    counted: it was not refused for a counted reason, or the intake answered it itself
    past a limit (:attr:`Answer.held`). A code revoked by a rotation within
    ``stale_seconds`` (a board still on the old image, not a guesser) is not counted here:
    it was counted on its (source, revoked code) pair before it was published
    (:func:`register_native`), never against the source. A bulk claim refused "not listed"
    counts on the source only (a listed hardware ID's claims were counted on their pair
    before publishing).
    What a source tried to create past the quota or the clone limit counts too, against
    the code (quota) or the hardware ID (clone limit); the clone rate's "try again later"
    does not (a factory of boards sharing one placeholder serial behind one address
    retries it)."""
    code = registration.bulk_identification_code
    if answer.held:
        return None
    if answer.status == "refused" and is_quota_refusal(answer.reason):
        if is_clone_limit_refusal(answer.reason):
            return Counted(target_of("hardware", code, registration.hardware_id.lower()))
        return Counted(target_of("code", code))
    if answer.status != "refused" or not (
        answer.reason in COUNTED_REFUSALS or x509_attestation.is_certificate_refusal(answer.reason)
    ):
        return None
    if answer.reason == REASON_REVOKED_CODE:
        revoked_at = await products.code_revoked_at(pool, code)
        if stale(revoked_at, datetime.now(UTC), stale_seconds):
            return None  # counted on its (source, revoked code) pair before it was published
        return Counted(target_of("code", code))
    if answer.reason == REASON_BULK_NOT_LISTED:
        # On the source only: a listed hardware ID's claims were counted on its (source, code
        # and hardware ID) pair before they were published (hold_unproven_claim), an
        # unlisted one has no key to guess and gets no pair.
        return Counted(None)
    return Counted(target_of("code", code))


def poll_counted(keyring: Keyring, request_id: str, answer: Answer) -> bool:
    """Whether a poll counts against the caller's address: only a request ID this service
    never issued (a guess); a poll of an issued one, even forgotten or refused, does not."""
    return answer.status == "unknown" and not request_id_is_issued(request_id, keyring.request_tag)


async def _completed(
    pool: Pool, keyring: Keyring, found: DeviceFiles, cache: DeviceCache | None, generation: int
) -> DeviceFiles:
    """``found`` with the files of services enabled or changed since its provisioning
    rendered and recorded (nothing to do, and no write, for a device whose files are all
    current), kept in ``cache`` when it was read at cache ``generation``."""
    if not found.provisioned() or not found.stale():
        return found
    completed = await files.complete_device_files(pool, keyring, found)
    if cache is not None:
        cache.put(completed.device_id, completed, generation)
    return completed


async def _read_device(pool: Pool, device_id: str, cache: DeviceCache | None) -> DeviceFiles | None:
    """The device as the registry has it now (``device_id``: lower-case UUID text), kept
    in ``cache`` for the device's next authenticated calls when it is complete (every
    enabled service's file current: one with files still to render is not kept, so the
    next call renders them)."""
    generation = cache.generation if cache is not None else 0  # before the query: see DeviceCache.put
    found = await files.one_device_files(pool, device_id)
    if cache is not None and found is not None and found.current() and not found.stale():
        cache.put(device_id, found, generation)
    return found


def _device(found: DeviceFiles) -> AuthenticatedDevice:
    return AuthenticatedDevice(
        found.device_id,
        found.hardware_id,
        found.name,
        found.lifecycle,
        found.credential_generation,
        found.current(),
        found,
    )


async def with_files(
    pool: Pool, keyring: Keyring, answer: Answer, cache: DeviceCache | None = None
) -> Answer:
    """A ``ready`` answer of a two-call boot: the device's manifest and every file inline.

    The files hold service passwords, so they go out under the device secret's rule
    (:func:`shared.domain.release.secret_release`), read from the registry now: only while
    the device is ``registered`` and not disabled, and only beside the device secret of
    its current credential generation. When the rule says no, or the answer's secret is
    of an earlier generation (a later claim reclaimed the device before "ready"), the
    device secret is left out of the answer too (a device that confirmed already holds
    it; a superseded one must claim again). Files not rendered
    yet (provisioning records them in the transaction that marks the request ready, so
    this should not happen): the answer has no files, and the device downloads them from
    the manifest URL.

    The read is always made (never answered from ``cache``: the rule needs the
    lifecycle now), and what it finds is kept in ``cache``: the device's next call,
    its ``ready``, then authenticates without a registry round trip."""
    if answer.status != "ready" or not answer.device_secret:
        return answer  # no secret, no files: no registry read for it either
    generation = cache.generation if cache is not None else 0
    found = await _read_device(pool, answer.device_id.lower(), cache)
    if found is None or secret_release(found.lifecycle, found.disabled) is not Release.GRANTED:
        return replace(answer, device_secret="")
    found = await _completed(pool, keyring, found, cache, generation)
    device = _device(found)
    current = keyring.device_secret(device.id, device.credential_generation)
    if not hmac.compare_digest(current.encode(), answer.device_secret.encode()):
        # A later claim (a reclaim before "ready") replaced this answer's credentials since
        # it was decided: no files, and no secret either (it would be refused anyway).
        return replace(answer, device_secret="")
    if not device.files:
        return answer
    return replace(
        answer,
        boot=Boot(
            device,
            tuple(InlineFile(f, _rendered(keyring, device, f)) for f in manifest(device)),
            data_file(device),
        ),
    )


def _current_files(device: AuthenticatedDevice) -> tuple[ServiceFile, ...]:
    if not device.files:
        raise Conflict(
            "no provisioning files yet: register first, then fetch the manifest", rule="registered_first"
        )
    return device.files


def manifest(device: AuthenticatedDevice) -> tuple[ServiceFile, ...]:
    """The files the device downloads (each with its size and SHA-256); Conflict (409)
    while it has none yet."""
    return tuple(f for f in _current_files(device) if f.recorded is not None)


def data_file(device: AuthenticatedDevice) -> DataFile | None:
    """The device's enrichment data file (the registration hook's ``data``), which the
    native manifest, its download and the two-call answer list after the services' files;
    None when the device has none. The reference protocol never lists it: its devices get
    the hook's name and categories only (docs/registration-hook.md)."""
    return device.registry.registration_data


def file_content(keyring: Keyring, device: AuthenticatedDevice, file_name: str) -> bytes:
    """Render one provisioning file again (nothing secret is stored) and check it
    against the digest recorded when it was generated; the enrichment data file as the
    manifest lists it (rendered from the device as read for this call)."""
    found = [
        f for f in _current_files(device) if f.recorded is not None and f.recorded.file_name == file_name
    ]
    data = data_file(device)
    if not found and data is not None and data.name == file_name:
        return data.content
    if not found:
        raise NotFound(
            f"the device has no provisioning file named {shortened(file_name)!r}", field="file_name"
        )
    return _rendered(keyring, device, found[0])


def _rendered(keyring: Keyring, device: AuthenticatedDevice, service: ServiceFile) -> bytes:
    """The file of ``service`` (one the manifest lists), rendered from its recipe and
    checked against its recorded digest: the one way a file is made for a device."""
    recorded = service.recorded
    if recorded is None:
        raise NotFound("the device has no provisioning file for this service", field="file_name")
    spec = device.registry.spec(service, recorded.service_uid)
    content = render(spec, keyring.service_password(recorded.service_uid, device.credential_generation))
    if sha256_hex(content) != recorded.sha256:
        log.error("provisioning file does not match its manifest", extra={"device_id": device.id})
        raise RuntimeError("provisioning file integrity check failed")
    return content


async def signal(publish: PublishSignal, device: AuthenticatedDevice, kind: SignalKind) -> None:
    """Publish the authenticated device's signal, with the credential generation it proved:
    deduplication applies a "ready" only while the device is still at it."""
    await publish(
        device.hardware_id,
        DeviceSignal(
            device_id=device.id, kind=kind, at=time.time(), credential_generation=device.credential_generation
        ),
    )
