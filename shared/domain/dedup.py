"""Deduplication: is a claimant of hardware ID ``H`` new, the same device again, or a clone?

The rules (docs/domain.md#duplicate-hardware-ids, docs/domain.md#auto-registration and
docs/domain.md#bulk-registration):

* A claim stays in its product: only devices of the product whose code the claim
  presented can be "the same device" or a bulk row it claims. A hardware ID held by
  another product of the account is, to an auto code, a taken ``H`` (its claimant is a
  clone ``H-N`` in the code's product) and, to a bulk code, not listed (the refusal an
  unlisted one gets: no oracle of other products' lists).
* A device presenting the device secret issued to ``H`` is ``H``, unless its system
  identifiers differ from ``H``'s: then the secret came with a cloned SD card. A clone
  ``H-N`` that claims ``H`` again (the ID it claimed when it was made) with its own secret
  is ``H-N`` (a copied image's board, which can prove only ``H``'s derived key).
* Before ``H`` confirmed its provisioning, a retry with the same idempotency key is the
  same device and gets the same answer (the same credentials). A claim from ``H``'s
  fingerprint (and, for bulk, with the row's key) with a new or no idempotency key is
  ``H`` too, a board that lost power or its answer before ``ready``: it gets ``H`` with a
  new credential generation (the earlier secret and service passwords are revoked), never
  ``H-1`` and never a refusal. Two sources doing that to one ``H`` raise a security alert.
* Any other claimant of a taken ``H`` is a clone and gets the smallest free ``H-N``
  (auto registration), or is refused (bulk registration: one device per CSV row).
* Creating a device is bounded (auto registration), where the one who creates pays: by
  the registration's quota (``max_devices``); by the clone limit, the clones of one claimed
  hardware ID one source may create within a window; and by the clone rate, the devices one
  source may create for one claimed hardware ID within a shorter window. Both count per
  family head of the claimed ID (:meth:`Family.head`): a claim that is a suffixed spelling
  of an existing device (``H-1``, ``H-01``, ``h-1-1`` while ``H`` exists) counts with
  everything the source created under that device's ID, so that spelling ``H``
  differently buys no fresh allowance; any other claim (every distinct real ID, dashed
  MACs included) counts its own ID and its clones only. Past the quota or
  the clone limit the claim is refused with a reason naming the limit; past the rate it is
  refused for now (``Verdict.retry_after``: the device tries again then, so a factory of
  boards sharing one placeholder serial behind one address gets through, slower). Nothing
  is created; a retry of a device that exists is never refused by them, and another
  source's claims are never slowed by what one source created.

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

from shared.domain.identifiers import hardware_id_ancestors, is_spelling_of, next_free_index

Lifecycle = Literal["preregistered", "registered", "provisioned"]
DecisionKind = Literal["new", "same", "clone", "refused"]

# Refusal reasons. Devices of the reference client read these as plain text, so they
# contain no commas, braces, quotes or protocol key words (docs/reference-client.md#what-fleetreg-serves).
REASON_DISABLED = "device disabled by the operator"
# A decision whose device the operator deleted since (its device_id is NULL): replayed or
# polled, it is answered refused with this reason.
REASON_DELETED = "device deleted by the operator"
REASON_BULK_NOT_LISTED = "hardware ID and registration key do not match a published bulk registration"
REASON_BULK_ALREADY_CLAIMED = "device already registered once: the operator must reset it before a new claim"

# The reference protocol (apv/v27): it has no Idempotency-Key, and its client keeps each
# service's credentials across boots and asks only for those it lacks, so a reclaim before
# "ready" is answered with the credentials the device has (new ones would leave it with
# two generations, its "ready" refused at every boot).
REFERENCE_PROTOCOL = "compat"

# The limits that refuse a claim: the kind travels typed (Verdict.quota, then the refused
# outcome's ``quota`` field, shared/events.py), never re-read from the reason's text except
# where the text is all there is (quota_of_reason).
Quota = Literal["max_devices", "clone_limit", "clone_rate"]


@dataclass(frozen=True)
class QuotaRule:
    """What every reader of a limit's refusal needs to know of it, in one entry of
    :data:`QUOTAS`: ``prefix``, the start of its refusal reason (what quota_of_reason
    recognises); ``final``, whether the claim is refused for good (for the window) and
    counted against its source, or else refused for now, to be tried again later (the
    native API's 429 with Retry-After; webhooks' refusal summaries count it "throttled")."""

    prefix: str
    final: bool


# Every Quota has its entry (tests/unit/test_dedup_rules.py checks).
QUOTAS: dict[Quota, QuotaRule] = {
    "max_devices": QuotaRule("quota reached:", final=True),
    "clone_limit": QuotaRule("clone limit reached:", final=True),
    "clone_rate": QuotaRule("too many new devices with this hardware ID from this address:", final=False),
}


def quota_of_reason(reason: str) -> Quota | None:
    """The limit whose refusal ``reason`` is (by its start), or None: a refusal by no limit.

    Only for where the reason's text is all there is: the registry's decisions, which keep
    the reason alone (the intake's polls, deduplication's replays), and refused outcomes of
    the release before RegistrationOutcome carried ``quota``. Everywhere else the kind
    travels typed."""
    return next((q for q, rule in QUOTAS.items() if reason.startswith(rule.prefix)), None)


def is_quota_refusal(reason: str) -> bool:
    """Whether a refusal's reason is a final limit's (the quota's or the clone limit's:
    :attr:`QuotaRule.final`): refusals of what a source tried to create, counted against it."""
    quota = quota_of_reason(reason)
    return quota is not None and QUOTAS[quota].final


def is_clone_limit_refusal(reason: str) -> bool:
    """Whether a refusal's reason is the clone limit's (what one hardware ID was refused)."""
    return quota_of_reason(reason) == "clone_limit"


def reason_max_devices(max_devices: int) -> str:
    return f"{QUOTAS['max_devices'].prefix} auto registration max_devices={max_devices}"


def reason_clone_limit(limit: int, window_s: float) -> str:
    return (
        f"{QUOTAS['clone_limit'].prefix} at most {limit} clones of one hardware ID"
        f" per {window_s:g} seconds from one address (FLEETREG_CLONE_LIMIT)"
    )


def reason_clone_rate(limit: int, window_s: float) -> str:
    """The clone rate's refusal, a "try again later": the intake recognises it by its start
    (is_clone_rate_refusal), also when it is polled."""
    return (
        f"{QUOTAS['clone_rate'].prefix} at most {limit} per {window_s:g} seconds"
        " (FLEETREG_CLONE_RATE_PER_SOURCE): try again later"
    )


def is_clone_rate_refusal(reason: str) -> bool:
    """Whether a refusal's reason is the clone rate's (a claim to try again later)."""
    return quota_of_reason(reason) == "clone_rate"


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
    # The sources of the claims answered with this device since it was last registered
    # (only while it is registered, not yet provisioned): a reclaim from another one is alerted.
    claim_sources: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Claim:
    request_id: str
    hardware_id: str
    fingerprint: str
    secret_digest: str = ""
    registration_key_digest: str = ""
    idempotency_key: str = ""
    source: str = ""  # where the call came from (shared.throttle.source_of)
    protocol: str = "native"  # the device API it came through: "native" or REFERENCE_PROTOCOL
    # The device proved the key of an X.509 certificate of this hardware ID (x509 attestation).
    attested: bool = False


@dataclass(frozen=True)
class Verdict:
    decision: DecisionKind
    device: KnownDevice | None = None
    created: bool = False  # a new device row is to be inserted
    claimed_preregistered: bool = False  # an existing preregistered row is taken over
    reason: str = ""
    quota: Quota | None = None  # the limit that refused the claim, if one did
    # "same" with a new credential generation (``device.credential_generation`` is the new
    # one): the earlier secret and service passwords are revoked.
    regenerated: bool = False
    # A reclaim before "ready" from a source other than an earlier claim's of the device
    # since it was registered (deduplication raises two_sources_before_ready).
    two_sources: bool = False
    # Seconds after which the same claim may succeed (the clone rate's refusal); 0: final.
    retry_after: float = 0.0

    @property
    def hardware_id(self) -> str:
        return self.device.hardware_id if self.device else ""


@dataclass(frozen=True)
class PerWindow:
    """A count per window: at most ``count`` within ``window_s`` seconds."""

    count: int
    window_s: float


@dataclass(frozen=True)
class Limits:
    """Deduplication's limits, one value each, built once from its settings
    (services/dedup/settings.py, ``limits_from_env``: the only place their defaults and
    environment variables are written). None: no such limit (a test's, or a trial decision's).

    * ``clone_limit``: the clones of one claimed hardware ID (its family head) one source
      may create per window; past it the claim is refused for the window.
    * ``clone_rate``: the devices (the first and its clones) one source may create for one
      claimed hardware ID (its family head) per window; past it the claim is to be tried
      again later.
    * ``wrong_keys_alert``: wrong registration keys for one bulk hardware ID per window that
      raise a security alert; they never refuse the right key."""

    clone_limit: PerWindow | None = None
    clone_rate: PerWindow | None = None
    wrong_keys_alert: PerWindow | None = None


NO_LIMITS = Limits()


def _new_device_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Context:
    """What one claim is decided under, beside its family: the code it presented (``kind``,
    its ``registration_id`` and ``product_id``: only that product's devices can be the
    claimant, and devices it creates are in it), the registration's quota ``max_devices``
    (None: no quota), deduplication's ``limits``, the decision time ``now`` (seconds since
    the epoch: devices created carry it, and the windows end at it), how a presented device
    secret is checked and how a new device ID is made. The clone limit and the clone rate
    count what the claim's own source created (``KnownDevice.created_source``)."""

    kind: Literal["auto", "bulk"]
    registration_id: str
    secret_matches: Callable[[KnownDevice, str], bool]
    product_id: str = ""
    limits: Limits = NO_LIMITS
    max_devices: int | None = None
    now: float = 0.0
    new_id: Callable[[], str] = _new_device_id


@dataclass(frozen=True)
class Creation:
    """A device some source created, as the per-source clone rate and limit count it:
    ``claimed`` is the hardware ID it claimed (lower case), ``clone`` whether it was
    assigned another ID than the one it claimed (``H-N``)."""

    device_id: str
    claimed: str
    source: str
    created_at: float  # seconds since the epoch
    clone: bool

    @classmethod
    def of(cls, device: KnownDevice) -> Creation:
        return cls(
            device.id,
            device.claimed_hardware_id.lower(),
            device.created_source,
            device.created_at,
            device.hardware_id.lower() != device.claimed_hardware_id.lower(),
        )


@dataclass
class Family:
    """The registered devices of one account that a batch's claims can collide with."""

    devices: dict[str, KnownDevice] = field(default_factory=dict)  # by hardware ID
    idempotent: dict[str, str] = field(default_factory=dict)  # idempotency key -> device ID
    # Devices per registration, for the registrations with a quota (counted under their lock).
    registration_devices: dict[str, int] = field(default_factory=dict)
    # What the batch's sources created under the family heads of its suffixed claims,
    # beyond the devices above (other spellings' stems: devices.load_creations); the same
    # device in both is counted once.
    created: list[Creation] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        devices: Iterable[KnownDevice],
        idempotent: dict[str, str] | None = None,
        registration_devices: dict[str, int] | None = None,
        created: Iterable[Creation] = (),
    ) -> Family:
        return cls(
            {d.hardware_id.lower(): d for d in devices},
            dict(idempotent or {}),
            dict(registration_devices or {}),
            list(created),
        )

    def by_id(self, device_id: str) -> KnownDevice | None:
        return next((d for d in self.devices.values() if d.id == device_id), None)

    def head(self, hardware_id: str) -> str:
        """The family head of a claim of ``hardware_id`` (lower case): the claimed ID, moved
        one index suffix level up (``H-1-01`` -> ``H-1``) for as long as the ID there is a
        device of the family (any product: hardware IDs are unique per account). ``H-1-1``
        with ``H-1`` and ``H`` existing -> ``h``; a dashed MAC ``b8-27-eb-00-00-02`` whose
        ``b8-27-eb-00-00`` is no device -> itself. The family must hold the claim's
        ancestors (devices.load_family's ``ids``)."""
        head = hardware_id.lower()
        for ancestor in hardware_id_ancestors(hardware_id):
            if ancestor not in self.devices:
                break
            head = ancestor
        return head

    def created_by(self, hardware_id: str, source: str, since: float, *, clones: bool) -> list[float]:
        """When (seconds since the epoch, ascending) the devices counted for a claim of
        ``hardware_id`` that ``source`` created after ``since`` were created (one created
        exactly a window ago has left it: the wait a refusal names is then enough); with
        ``clones`` only the clones (a device assigned an ID other than the one it claimed),
        else every device. Counted: the devices that claimed its :meth:`head`, and when the
        head is an ancestor (the claim is a suffixed spelling of an existing device) also
        those that claimed a suffixed spelling of the head (``H-1``, ``H-01``, ``h-1-1``).
        Counts the family's devices, this batch's creations and :attr:`created` alike.

        A suffixed spelling of the head counts as one of its clones (for ``clones``): a
        source that made ``H-1`` ... ``H-k`` before ``H`` existed (each a new device then,
        with no head to count under) meets them when it claims ``H`` itself, so it cannot
        take ``H`` past the rate, nor past the clone limit, by spelling first (the outside
        tester's attack3 G2). Distinct IDs are no spellings of each other (``...-02`` is not
        ``...-01`` suffixed), so a site's dashed MACs stay independent."""
        key = self.head(hardware_id)

        def counts(claimed: str) -> bool:
            # With no existing ancestor the spellings present are the claim's single-level
            # ones (``H-N``: the family is loaded by the claim's own stem); with one, every
            # spelling the source made under the head (loaded in ``created``).
            return is_spelling_of(claimed, key)

        counted = {c.device_id: c for c in self.created if c.source == source and counts(c.claimed)}
        for d in self.devices.values():
            if d.created_source == source and d.id not in counted and counts(d.claimed_hardware_id):
                counted[d.id] = Creation.of(d)
        return sorted(
            c.created_at
            for c in counted.values()
            if c.created_at > since and (not clones or c.clone or c.claimed.lower() != key)
        )

    def apply(self, claim: Claim, verdict: Verdict) -> None:
        if verdict.device is not None:
            device = verdict.device
            if claim.source and verdict.decision != "refused" and device.lifecycle == "registered":
                device = replace(device, claim_sources=device.claim_sources | {claim.source})
            self.devices[device.hardware_id.lower()] = device
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


def _own_clone(claim: Claim, family: Family, context: Context) -> KnownDevice | None:
    """The clone ``H-N`` of the claim's product that claimed ``H`` when it was created and
    now presents ``H`` again with its own device secret (from the same machine): itself.
    A board of a copied image holds ``H``'s derived key only, so it proves ``H`` and is
    known by its secret (docs/device-identity.md); with a code, the same holds. Only a claim
    carrying a secret pays the comparisons."""
    if not claim.secret_digest:
        return None
    for device in family.devices.values():
        if (
            device.product_id == context.product_id
            and device.hardware_id.lower() != claim.hardware_id.lower()
            and device.claimed_hardware_id.lower() == claim.hardware_id.lower()
            and context.secret_matches(device, claim.secret_digest)
            and _same_machine(device, claim)
        ):
            return device
    return None


def _same_machine(device: KnownDevice, claim: Claim) -> bool:
    """The secret was copied with the SD card if the system identifiers differ: a clone."""
    return not claim.fingerprint or not device.fingerprint or claim.fingerprint == device.fingerprint


def _retry_before_confirmation(claim: Claim, family: Family, product_id: str) -> KnownDevice | None:
    """A device of the claim's product not yet confirmed that claims again, from the same
    fingerprint, the hardware ID it claimed before or the one it was assigned (a clone
    starting over as ``H-1``)."""
    if not claim.fingerprint:
        return None
    for device in family.devices.values():
        if (
            device.product_id == product_id
            and claim.hardware_id.lower() in (device.claimed_hardware_id.lower(), device.hardware_id.lower())
            and device.fingerprint == claim.fingerprint
            and device.lifecycle == "registered"
        ):
            return device
    return None


def _reclaimed(device: KnownDevice, claim: Claim) -> Verdict:
    """A board that lost power or its answer before "ready" claims again without the
    idempotency key of the answer it lost: it is the device, with new credentials, so
    that whoever holds the earlier answer holds nothing any more (on the reference
    protocol: with the credentials it has, see REFERENCE_PROTOCOL)."""
    if device.disabled:
        return Verdict("refused", device=device, reason=REASON_DISABLED)
    others = device.claim_sources - {claim.source}
    if claim.protocol == REFERENCE_PROTOCOL:
        return Verdict(
            "same",
            device=device,
            reason="retry from the same fingerprint before confirmation",
            two_sources=bool(claim.source and others),
        )
    return Verdict(
        "same",
        device=replace(device, credential_generation=device.credential_generation + 1),
        reason="claimed again before confirmation: new credentials",
        regenerated=True,
        two_sources=bool(claim.source and others),
    )


def _attested_again(device: KnownDevice, claim: Claim) -> Verdict:
    """A claim of a registered ``H`` proven by ``H``'s X.509 certificate but without ``H``'s
    device secret: ``H`` itself, a board whose storage was wiped (its key lives in a secure
    element and cannot be copied to another board), given a new credential generation (the
    earlier secret and service passwords are revoked) and provisioned again: confirmed or
    not, it is registered until it confirms. Never a clone; a disabled device stays refused."""
    if device.disabled:
        return Verdict("refused", device=device, reason=REASON_DISABLED)
    others = device.claim_sources - {claim.source}
    return Verdict(
        "same",
        device=replace(device, credential_generation=device.credential_generation + 1),
        reason="device proved its certificate without its device secret: new credentials",
        regenerated=True,
        two_sources=bool(claim.source and others),
    )


def decide(claim: Claim, family: Family, context: Context) -> Verdict:
    """Decide one claim against the family's current state under ``context`` (see the
    module docstring)."""
    product_id, kind = context.product_id, context.kind
    if claim.idempotency_key and claim.idempotency_key in family.idempotent:
        prior = family.by_id(family.idempotent[claim.idempotency_key])
        if (
            prior is not None
            and prior.product_id == product_id
            and prior.lifecycle == "registered"
            and prior.claimed_hardware_id.lower() == claim.hardware_id.lower()
            and _key_holds(prior, claim, kind)
        ):
            return _same(prior, "retry with the same idempotency key")

    existing = family.devices.get(claim.hardware_id.lower())  # case-insensitive (domain: identity rules)
    # A device of another product is no candidate for "the same device", nor a bulk row of this code.
    own = existing if existing is not None and existing.product_id == product_id else None
    if (
        own is not None
        and claim.secret_digest
        and context.secret_matches(own, claim.secret_digest)
        and _same_machine(own, claim)
    ):
        return _same(own, "device presented its device secret")
    clone = _own_clone(claim, family, context)
    if clone is not None:
        return _same(clone, "clone presented its device secret with the hardware ID it claimed")

    if own is not None and claim.attested and own.lifecycle != "preregistered":
        return _attested_again(own, claim)

    retry = _retry_before_confirmation(claim, family, product_id)
    if retry is not None and _key_holds(retry, claim, kind):
        return _reclaimed(retry, claim)

    if kind == "bulk":
        return _decide_bulk(claim, own)

    taken_over = own is not None and own.lifecycle == "preregistered"
    if not taken_over:
        refusal = _over_limit(claim, family, context, clone=existing is not None)
        if refusal is not None:
            return refusal

    if existing is None:
        device = _created(claim, context, claim.hardware_id)
        return Verdict("new", device=device, created=True, reason="first device with this hardware ID")
    if own is not None and own.lifecycle == "preregistered":
        if own.disabled:
            return Verdict("refused", device=own, reason=REASON_DISABLED)
        return Verdict(
            "new",
            device=_taken_over(own, claim),
            claimed_preregistered=True,
            reason="device was reset for re-provisioning",
        )
    # H-N keeps the case in which H was first registered (the registry's display case); it is
    # free in the whole account (hardware IDs are unique per account), whatever product holds H.
    assigned = next_free_index(existing.hardware_id, family.devices)
    return Verdict(
        "clone",
        device=_created(claim, context, assigned),
        created=True,
        reason=f"hardware ID {claim.hardware_id} belongs to another device: assigned {assigned}",
    )


def _created(claim: Claim, context: Context, hardware_id: str) -> KnownDevice:
    """The device a claim creates under ``hardware_id`` (the claimed one, or ``H-N`` for a
    clone), in the context's product and registration, created now by the claim's source."""
    return KnownDevice(
        id=context.new_id(),
        hardware_id=hardware_id,
        claimed_hardware_id=claim.hardware_id,
        name=hardware_id,
        fingerprint=claim.fingerprint,
        lifecycle="registered",
        disabled=False,
        credential_generation=1,
        registration_id=context.registration_id,
        created_at=context.now,
        product_id=context.product_id,
        created_source=claim.source,
    )


def _taken_over(device: KnownDevice, claim: Claim) -> KnownDevice:
    """A preregistered row (a reset device, a bulk row) taken over by the claim: registered
    with the claimant's fingerprint, no claim sources yet."""
    return replace(device, fingerprint=claim.fingerprint, lifecycle="registered", claim_sources=frozenset())


def _over_limit(claim: Claim, family: Family, context: Context, *, clone: bool) -> Verdict | None:
    """The refusal when creating one more device would exceed a limit, else None: the quota,
    then the clone limit (final for the window), then the clone rate (try again later)."""
    max_devices, limits, now = context.max_devices, context.limits, context.now
    if max_devices is not None and family.registration_devices.get(context.registration_id, 0) >= max_devices:
        return Verdict("refused", reason=reason_max_devices(max_devices), quota="max_devices")
    clone_limit, clone_rate = limits.clone_limit, limits.clone_rate
    if (
        clone
        and clone_limit is not None
        and len(family.created_by(claim.hardware_id, claim.source, now - clone_limit.window_s, clones=True))
        >= clone_limit.count
    ):
        return Verdict(
            "refused", reason=reason_clone_limit(clone_limit.count, clone_limit.window_s), quota="clone_limit"
        )
    if clone_rate is not None:
        created = family.created_by(claim.hardware_id, claim.source, now - clone_rate.window_s, clones=False)
        if len(created) >= clone_rate.count:
            # Free again when the oldest creation that fills the window leaves it.
            freed = created[len(created) - clone_rate.count] + clone_rate.window_s
            return Verdict(
                "refused",
                reason=reason_clone_rate(clone_rate.count, clone_rate.window_s),
                quota="clone_rate",
                retry_after=max(1.0, freed - now),
            )
    return None


@dataclass(frozen=True)
class Reached:
    """A per-source clone limit or clone rate that one claim's source reached: its creation
    filled it (``just_now``) or the claim was refused by it. ``count`` is what the source
    created within ``window_s`` (clones for the clone limit, devices for the rate)."""

    quota: Quota
    count: int
    window_s: float
    just_now: bool


def limit_reached(claim: Claim, verdict: Verdict, family: Family, context: Context) -> Reached | None:
    """The per-source clone limit or rate the claim's source reached, read after
    :meth:`Family.apply` recorded ``verdict`` (deduplication raises a squatting alert on
    it); None when the claim created nothing at a limit and was refused by neither."""
    if not verdict.created and verdict.quota not in ("clone_limit", "clone_rate"):
        return None  # most claims: nothing to count
    clone_limit, clone_rate = context.limits.clone_limit, context.limits.clone_rate

    def count(limit: PerWindow | None, *, clones: bool) -> int:
        if limit is None:
            return 0
        since = context.now - limit.window_s
        return len(family.created_by(claim.hardware_id, claim.source, since, clones=clones))

    clones, created = count(clone_limit, clones=True), count(clone_rate, clones=False)
    if verdict.quota == "clone_limit" and clone_limit is not None:
        return Reached("clone_limit", clones, clone_limit.window_s, just_now=False)
    if verdict.quota == "clone_rate" and clone_rate is not None:
        return Reached("clone_rate", created, clone_rate.window_s, just_now=False)
    if verdict.decision == "clone" and clone_limit is not None and clones == clone_limit.count:
        return Reached("clone_limit", clones, clone_limit.window_s, just_now=True)
    if clone_rate is not None and created == clone_rate.count:
        return Reached("clone_rate", created, clone_rate.window_s, just_now=True)
    return None


def _decide_bulk(claim: Claim, existing: KnownDevice | None) -> Verdict:
    """``existing``: the device of the code's product with the claimed hardware ID, if any.
    A wrong key, an unknown hardware ID and another product's get the same answer: no hint
    which it was."""
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
    return Verdict(
        "new",
        device=_taken_over(existing, claim),
        claimed_preregistered=True,
        reason="bulk device claimed with its key",
    )
