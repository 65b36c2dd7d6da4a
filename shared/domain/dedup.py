"""Deduplication: is a claimant of hardware ID ``H`` new, the same device again, or a clone?

The rules (../shared/spec/domain.md, "Auto registration" and "Bulk registration"):

* A device presenting the device secret issued to ``H`` is ``H``, unless its system
  identifiers differ from ``H``'s: then the secret came with a cloned SD card.
* Before ``H`` confirmed its provisioning, a retry with the same idempotency key or
  from the same fingerprint is the same device and gets the same answer.
* Any other claimant of a taken ``H`` is a clone and gets the smallest free ``H-N``
  (auto registration), or is refused (bulk registration: one device per CSV row).
* Creating a device is bounded (auto registration): by the registration's quota
  (``max_devices``) and by the clone limit per claimed hardware ID and time window.
  Past either the claim is refused with a reason naming the limit and nothing is
  created; a retry of a device that exists is never refused by them.

:func:`decide` is pure: it reads a :class:`Family` (every registered device whose
hardware ID could collide with the claim) and returns a :class:`Verdict`;
:meth:`Family.apply` records the verdict so the next claim of the same batch
sees it. The database's unique constraint is the final guard across instances: two
instances that decide clones of ``H`` on the same state pick the same ``H-N`` and one of
them decides again, so the clone limit holds across instances too.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from shared.domain.identifiers import next_free_index

Lifecycle = Literal["preregistered", "registered", "provisioned"]
DecisionKind = Literal["new", "same", "clone", "refused"]

# Refusal reasons. Devices of the reference client read these as plain text, so they
# contain no commas, braces, quotes or protocol key words (see docs/device-protocol.md).
REASON_DISABLED = "device disabled by the operator"
# A decision whose device the operator deleted since (its device_id is NULL): replayed or
# polled, it is answered refused with this reason.
REASON_DELETED = "device deleted by the operator"
REASON_BULK_NOT_LISTED = "hardware ID and registration key do not match a published bulk registration"
REASON_BULK_ALREADY_CLAIMED = "device already registered once: the operator must reset it before a new claim"

Quota = Literal["max_devices", "clone_limit"]


def reason_max_devices(max_devices: int) -> str:
    return f"quota reached: auto registration max_devices={max_devices}"


def reason_clone_limit(limit: int, window_s: float) -> str:
    return (
        f"clone limit reached: at most {limit} clones of one hardware ID per {window_s:g} seconds"
        " (FLEETREG_CLONE_LIMIT)"
    )


@dataclass
class KnownDevice:
    id: str
    hardware_id: str
    claimed_hardware_id: str
    name: str
    fingerprint: str
    lifecycle: Lifecycle
    disabled: bool
    credential_generation: int
    registration_id: str
    registration_key_digest: str = ""
    created_at: float = 0.0  # seconds since the epoch
    product_id: str = ""
    created_source: str = ""  # the source of the claim that created it ("" for bulk rows and older devices)
    # Its first registration carried an Idempotency-Key: then only that key, never the
    # fingerprint alone, makes a later claim "the same device" before confirmation.
    registered_with_key: bool = False


@dataclass(frozen=True)
class Claim:
    request_id: str
    hardware_id: str
    fingerprint: str
    secret_digest: str = ""
    registration_key_digest: str = ""
    idempotency_key: str = ""
    source: str = ""  # where the call came from (shared.throttle.source_of)


@dataclass(frozen=True)
class Verdict:
    decision: DecisionKind
    device: KnownDevice | None = None
    created: bool = False  # a new device row is to be inserted
    claimed_preregistered: bool = False  # an existing preregistered row is taken over
    reason: str = ""
    quota: Quota | None = None  # the limit that refused the claim, if one did

    @property
    def hardware_id(self) -> str:
        return self.device.hardware_id if self.device else ""


@dataclass(frozen=True)
class Limits:
    """What bounds the devices an auto registration's claims may create.

    ``now`` is the decision time (seconds since the epoch): devices created by this
    batch carry it, and the clone window ends at it."""

    max_devices: int | None = None  # the registration's quota; None: no quota
    clone_limit: int | None = None  # clones of one claimed hardware ID per window; None: none
    clone_window_s: float = 3600.0
    now: float = 0.0


@dataclass
class Family:
    """The registered devices of one account that a batch's claims can collide with."""

    devices: dict[str, KnownDevice] = field(default_factory=dict)  # by hardware ID
    idempotent: dict[str, str] = field(default_factory=dict)  # idempotency key -> device ID
    # Devices per registration, for the registrations with a quota (counted under their lock).
    registration_devices: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        devices: Iterable[KnownDevice],
        idempotent: dict[str, str] | None = None,
        registration_devices: dict[str, int] | None = None,
    ) -> Family:
        return cls(
            {d.hardware_id.lower(): d for d in devices},
            dict(idempotent or {}),
            dict(registration_devices or {}),
        )

    def by_id(self, device_id: str) -> KnownDevice | None:
        return next((d for d in self.devices.values() if d.id == device_id), None)

    def clones_since(self, hardware_id: str, since: float) -> int:
        """Clones assigned to claimants of ``hardware_id`` (``H-N``) created at or after ``since``."""
        return sum(
            1
            for d in self.devices.values()
            if d.claimed_hardware_id.lower() == hardware_id.lower()
            and d.hardware_id.lower() != hardware_id.lower()
            and d.created_at >= since
        )

    def apply(self, claim: Claim, verdict: Verdict) -> None:
        if verdict.device is not None:
            self.devices[verdict.device.hardware_id.lower()] = verdict.device
            # A refusal naming a device never makes its key that device's (see load_idempotent).
            if claim.idempotency_key and verdict.decision != "refused":
                self.idempotent.setdefault(claim.idempotency_key, verdict.device.id)
            if verdict.created:
                registration = verdict.device.registration_id
                self.registration_devices[registration] = self.registration_devices.get(registration, 0) + 1


def _same(device: KnownDevice, reason: str) -> Verdict:
    if device.disabled:
        return Verdict("refused", device=device, reason=REASON_DISABLED)
    return Verdict("same", device=device, reason=reason)


def _key_holds(device: KnownDevice, claim: Claim, kind: str) -> bool:
    """A bulk retry without the device secret must still carry the row's registration key."""
    if kind != "bulk":
        return True
    return bool(device.registration_key_digest) and hmac.compare_digest(
        device.registration_key_digest, claim.registration_key_digest
    )


def _same_machine(device: KnownDevice, claim: Claim) -> bool:
    """The secret was copied with the SD card if the system identifiers differ: a clone."""
    return not claim.fingerprint or not device.fingerprint or claim.fingerprint == device.fingerprint


def _retry_before_confirmation(claim: Claim, family: Family) -> KnownDevice | None:
    """A device not yet confirmed that claims again, from the same fingerprint, the hardware
    ID it claimed before or the one it was assigned (a clone starting over as ``H-1``)."""
    if not claim.fingerprint:
        return None
    for device in family.devices.values():
        if (
            claim.hardware_id.lower() in (device.claimed_hardware_id.lower(), device.hardware_id.lower())
            and device.fingerprint == claim.fingerprint
            and device.lifecycle == "registered"
            # CPU ID and MAC are not secret: a device that registered with a key proves
            # a retry with that key (checked first in decide), not with its fingerprint.
            and not device.registered_with_key
        ):
            return device
    return None


def decide(
    claim: Claim,
    family: Family,
    *,
    kind: Literal["auto", "bulk"],
    registration_id: str,
    secret_matches: Callable[[KnownDevice, str], bool],
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    limits: Limits | None = None,
    product_id: str = "",
) -> Verdict:
    """Decide one claim against the family's current state (see the module docstring);
    ``product_id`` is the product whose code the claim presented (devices it creates are in it)."""
    limits = limits or Limits()
    if claim.idempotency_key and claim.idempotency_key in family.idempotent:
        prior = family.by_id(family.idempotent[claim.idempotency_key])
        if (
            prior is not None
            and prior.lifecycle == "registered"
            and prior.claimed_hardware_id.lower() == claim.hardware_id.lower()
            and _key_holds(prior, claim, kind)
        ):
            return _same(prior, "retry with the same idempotency key")

    existing = family.devices.get(claim.hardware_id.lower())  # case-insensitive (domain: identity rules)
    if (
        existing is not None
        and claim.secret_digest
        and secret_matches(existing, claim.secret_digest)
        and _same_machine(existing, claim)
    ):
        return _same(existing, "device presented its device secret")

    retry = _retry_before_confirmation(claim, family)
    if retry is not None and _key_holds(retry, claim, kind):
        return _same(retry, "retry from the same fingerprint before confirmation")

    if kind == "bulk":
        return _decide_bulk(claim, existing)

    creates = existing is None or existing.lifecycle != "preregistered"
    if creates:
        refusal = _over_limit(claim, family, registration_id, limits, clone=existing is not None)
        if refusal is not None:
            return refusal

    if existing is None:
        device = KnownDevice(
            id=new_id(),
            hardware_id=claim.hardware_id,
            claimed_hardware_id=claim.hardware_id,
            name=claim.hardware_id,
            fingerprint=claim.fingerprint,
            lifecycle="registered",
            disabled=False,
            credential_generation=1,
            registration_id=registration_id,
            created_at=limits.now,
            registered_with_key=bool(claim.idempotency_key),
            product_id=product_id,
            created_source=claim.source,
        )
        return Verdict("new", device=device, created=True, reason="first device with this hardware ID")
    if existing.lifecycle == "preregistered":
        if existing.disabled:
            return Verdict("refused", device=existing, reason=REASON_DISABLED)
        taken = replace(
            existing,
            fingerprint=claim.fingerprint,
            lifecycle="registered",
            registered_with_key=bool(claim.idempotency_key),
        )
        return Verdict(
            "new", device=taken, claimed_preregistered=True, reason="device was reset for re-provisioning"
        )
    # H-N keeps the case in which H was first registered (the registry's display case).
    assigned = next_free_index(existing.hardware_id, family.devices)
    clone = KnownDevice(
        id=new_id(),
        hardware_id=assigned,
        claimed_hardware_id=claim.hardware_id,
        name=assigned,
        fingerprint=claim.fingerprint,
        lifecycle="registered",
        disabled=False,
        credential_generation=1,
        registration_id=registration_id,
        created_at=limits.now,
        registered_with_key=bool(claim.idempotency_key),
        product_id=product_id,
        created_source=claim.source,
    )
    return Verdict(
        "clone",
        device=clone,
        created=True,
        reason=f"hardware ID {claim.hardware_id} belongs to another device: assigned {assigned}",
    )


def _over_limit(
    claim: Claim, family: Family, registration_id: str, limits: Limits, *, clone: bool
) -> Verdict | None:
    """The refusal when creating one more device would exceed a limit, else None."""
    if (
        limits.max_devices is not None
        and family.registration_devices.get(registration_id, 0) >= limits.max_devices
    ):
        return Verdict("refused", reason=reason_max_devices(limits.max_devices), quota="max_devices")
    if (
        clone
        and limits.clone_limit is not None
        and family.clones_since(claim.hardware_id, limits.now - limits.clone_window_s) >= limits.clone_limit
    ):
        return Verdict(
            "refused",
            reason=reason_clone_limit(limits.clone_limit, limits.clone_window_s),
            quota="clone_limit",
        )
    return None


def _decide_bulk(claim: Claim, existing: KnownDevice | None) -> Verdict:
    # A wrong key and an unknown hardware ID get the same answer: no hint which it was.
    if existing is None or not (
        existing.registration_key_digest
        and claim.registration_key_digest
        and hmac.compare_digest(existing.registration_key_digest, claim.registration_key_digest)
    ):
        return Verdict("refused", reason=REASON_BULK_NOT_LISTED)
    if existing.disabled:
        return Verdict("refused", device=existing, reason=REASON_DISABLED)
    if existing.lifecycle != "preregistered":
        return Verdict("refused", device=existing, reason=REASON_BULK_ALREADY_CLAIMED)
    taken = replace(
        existing,
        fingerprint=claim.fingerprint,
        lifecycle="registered",
        registered_with_key=bool(claim.idempotency_key),
    )
    return Verdict("new", device=taken, claimed_preregistered=True, reason="bulk device claimed with its key")
