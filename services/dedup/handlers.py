"""Deduplication's business logic: a batch of registration requests in, one registry
transaction, then the decided events (for provisioning) and refusals (for the intake).

Idempotent: a request decided before (a redelivered batch) is not decided again;
its stored decision is published again instead, so a crash between the database
commit and the sends loses nothing.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime

from shared.db import alerts, decisions, devices, hooks, products, registrations
from shared.db.alerts import (
    BULK_KEY_GUESSING,
    HARDWARE_ID_SQUATTING,
    QUOTA_FILLED,
    TWO_SOURCES_BEFORE_READY,
    AlertKind,
    AlertSighting,
)
from shared.db.decisions import DecisionRecord, RegistryConflict, StoredDecision
from shared.db.hooks import CallState, Reservation
from shared.db.pool import Connection, Pool
from shared.domain import hooks as hook_rules
from shared.domain.admission import REASON_UNKNOWN_CODE, CodeAdmission, admission_refusal, recorded
from shared.domain.credentials import Keyring
from shared.domain.dedup import (
    NO_LIMITS,
    REASON_BULK_NOT_LISTED,
    REASON_DELETED,
    Claim,
    Context,
    Family,
    KnownDevice,
    Limits,
    PerWindow,
    Quota,
    Verdict,
    decide,
    limit_reached,
    quota_of_reason,
)
from shared.domain.identifiers import family_stems, hardware_id_ancestors
from shared.events import (
    DeviceSignal,
    HookRequested,
    RegistrationDecided,
    RegistrationOutcome,
    RegistrationRequested,
)
from shared.metrics import (
    PIPELINE_LATENCY,
    QUOTA_REFUSALS,
    REGISTRATIONS,
    SECURITY_ALERT_EVENTS,
    SECURITY_ALERTS,
)

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 5

# The log line of a raised alert, per kind (docs/security.md, "Security alerts").
ALERT_LOG_MESSAGES: dict[AlertKind, str] = {
    BULK_KEY_GUESSING: "repeated wrong registration keys for one hardware ID",
    HARDWARE_ID_SQUATTING: "one source is creating clones of one hardware ID",
    QUOTA_FILLED: "an auto registration's max_devices is reached",
    TWO_SOURCES_BEFORE_READY: "two sources reclaimed one hardware ID before it confirmed",
}


@dataclass
class Decisions:
    """What a batch produced, to publish once the transaction committed."""

    decided: list[RegistrationDecided] = field(default_factory=list)
    refused: list[RegistrationOutcome] = field(default_factory=list)
    # Reserved claims (their registration has a hook): the call to make, instead of their
    # registration.decided, which the notifier sends when the hook allows.
    hooks: list[HookRequested] = field(default_factory=list)

    def add(self, answer: _Answer) -> None:
        event = answer.event()
        if isinstance(event, RegistrationOutcome):
            self.refused.append(event)
        else:
            self.decided.append(event)


@dataclass(frozen=True)
class _Answer:
    """What one claim's decision publishes, taken from the verdict just recorded or from the
    registry's row (a replay): :meth:`event` is the one place the events are built."""

    request_id: str
    account_id: str | None
    product_id: str | None
    decision: str
    device_id: str | None  # None: refused, or the device was deleted since (a replay)
    hardware_id: str
    credential_generation: int
    reason: str = ""
    quota: Quota | None = None
    retry_after: float = 0.0  # seconds
    received_at: float = 0.0  # 0: not known (a replay)

    @classmethod
    def recorded(cls, record: DecisionRecord) -> _Answer:
        verdict, device = record.verdict, record.verdict.device
        return cls(
            request_id=record.claim.request_id,
            account_id=record.account_id,
            product_id=record.product_id,
            decision=verdict.decision,
            device_id=device.id if device is not None else None,
            hardware_id=device.hardware_id if device is not None else "",
            credential_generation=device.credential_generation if device is not None else 0,
            reason=verdict.reason,
            quota=verdict.quota,
            retry_after=verdict.retry_after,
            received_at=record.received_at,
        )

    @classmethod
    def replayed(cls, stored: StoredDecision) -> _Answer:
        refused = stored.decision == "refused"
        return cls(
            request_id=stored.request_id,
            account_id=stored.account_id,
            product_id=stored.product_id,
            decision=stored.decision,
            device_id=stored.device_id,
            hardware_id=stored.hardware_id,
            credential_generation=stored.credential_generation,
            reason=stored.reason if refused else REASON_DELETED,  # no device: deleted since
            # The registry keeps the reason alone: its text is all there is to tell the limit.
            quota=quota_of_reason(stored.reason) if refused else None,
        )

    def event(self) -> RegistrationDecided | RegistrationOutcome:
        if self.decision == "refused" or self.device_id is None:
            return RegistrationOutcome(
                request_id=self.request_id,
                status="refused",
                reason=self.reason,
                decision="refused",
                account_id=self.account_id or "",
                retry_after=min(86_400, math.ceil(self.retry_after)),
                quota=self.quota or "none",
            )
        return RegistrationDecided(
            request_id=self.request_id,
            account_id=self.account_id or "",
            product_id=self.product_id or "",
            device_id=self.device_id,
            hardware_id=self.hardware_id,
            decision=self.decision,
            credential_generation=self.credential_generation,
            received_at=self.received_at,
        )


def _claim(request: RegistrationRequested) -> Claim:
    return Claim(
        request_id=request.request_id,
        hardware_id=request.hardware_id,
        fingerprint=request.fingerprint,
        secret_digest=request.secret_digest,
        registration_key_digest=request.registration_key_digest,
        idempotency_key=request.idempotency_key,
        source=request.source,
        protocol=request.protocol,
        attested=request.attested,
    )


@dataclass
class _Outcome:
    """What one transaction decided, and the alert occurrences it recorded."""

    records: list[DecisionRecord] = field(default_factory=list)
    sightings: list[AlertSighting] = field(default_factory=list)
    raised: list[AlertSighting] = field(default_factory=list)  # the occurrences that crossed a threshold
    # Request ID -> the hook call its claim waits on (docs/registration-hook.md).
    held: dict[str, HookRequested] = field(default_factory=dict)
    # Request ID -> the provisional answer of a reserved reference-protocol claim: its step 2
    # answers as without a hook (H or H-N), the hook is consulted before step 5's secret.
    provisional: dict[str, RegistrationOutcome] = field(default_factory=dict)


async def decide_batch(
    pool: Pool, keyring: Keyring, requests: Sequence[RegistrationRequested], limits: Limits
) -> Decisions:
    """Decide every request of a batch in one transaction under deduplication's ``limits``
    (the service's settings); return what to publish."""
    out = Decisions()
    unique = list({r.request_id: r for r in requests}.values())
    already = await decisions.decided(pool, [r.request_id for r in unique])
    # A replayed decision of a device still reserved for its hook asks for the call again
    # instead: its registration.decided is the notifier's to send when the hook allows.
    reserved = await hooks.open_calls_of_devices(
        pool, [s.device_id for s in already.values() if s.device_id and s.decision != "refused"]
    )
    for stored in already.values():
        call = reserved.get(stored.device_id or "")
        if call is not None:
            out.hooks.append(HookRequested(call_id=call[0], registration_id=call[1], request_id=call[2]))
        else:
            out.add(_Answer.replayed(stored))
    fresh = [r for r in unique if r.request_id not in already]
    if not fresh:
        return out
    admissions = await products.resolve_codes(pool, [r.bulk_identification_code for r in fresh])

    def secret_matches(device: KnownDevice, digest: str) -> bool:
        return keyring.device_secret_matches(device.id, device.credential_generation, digest)

    for attempt in range(1, MAX_CONFLICT_RETRIES + 1):
        try:
            outcome = await _decide_and_record(pool, fresh, admissions, secret_matches, limits)
            break
        except RegistryConflict:
            # Another instance took a hardware ID meanwhile (a rebalance): decide again on fresh state.
            log.warning(
                "hardware ID taken concurrently; deciding the batch again", extra={"attempt": attempt}
            )
            if attempt == MAX_CONFLICT_RETRIES:
                raise
    _count_limits(outcome)
    now = time.time()
    for record in outcome.records:
        REGISTRATIONS.labels(record.verdict.decision).inc()
        PIPELINE_LATENCY.labels("decided").observe(max(0.0, now - record.received_at))
        held = outcome.held.get(record.claim.request_id)
        if held is not None:
            out.hooks.append(held)
            provisional = outcome.provisional.get(record.claim.request_id)
            if provisional is not None:
                out.refused.append(provisional)
        else:
            out.add(_Answer.recorded(record))
    return out


def _count_limits(outcome: _Outcome) -> None:
    """Metrics and log lines of a committed transaction (never of one decided again)."""
    for record in outcome.records:
        if record.verdict.quota is not None:
            QUOTA_REFUSALS.labels(record.verdict.quota).inc()
    for sighting in outcome.sightings:
        SECURITY_ALERT_EVENTS.labels(sighting.kind).inc()
    for sighting in outcome.raised:
        SECURITY_ALERTS.labels(sighting.kind).inc()
        # The hardware ID and the source are not secrets; the keys tried are never logged
        # (only digests travel).
        log.warning(
            f"security alert: {ALERT_LOG_MESSAGES[sighting.kind]}",
            extra={
                "alert": sighting.kind,
                "account_id": sighting.account_id,
                "product_id": sighting.product_id,
                "hardware_id": sighting.hardware_id,
                "source": sighting.source,
                "count": sighting.count,
                "window_s": sighting.window_s,
            },
        )


async def _decide_and_record(
    pool: Pool,
    requests: Sequence[RegistrationRequested],
    admissions: dict[str, CodeAdmission],
    secret_matches: Callable[[KnownDevice, str], bool],
    limits: Limits,
) -> _Outcome:
    out = _Outcome()
    records = out.records
    by_product: dict[tuple[str, str], list[tuple[RegistrationRequested, CodeAdmission]]] = defaultdict(list)
    for request in requests:
        admission = admissions.get(request.bulk_identification_code)
        reason = admission_refusal(admission)
        if reason is not None or admission is None:
            records.append(
                DecisionRecord(
                    claim=_claim(request),
                    verdict=Verdict("refused", reason=reason or REASON_UNKNOWN_CODE),
                    account_id=admission.account_id if admission else None,
                    product_id=admission.product_id if admission else None,
                    received_at=request.received_at,
                    protocol=request.protocol,
                )
            )
        else:
            by_product[(admission.account_id, admission.product_id)].append((request, admission))

    auto_registrations = [
        a.registration_id for items in by_product.values() for _, a in items if a.kind == "auto"
    ]
    desks: list[_HookDesk] = []
    async with pool.acquire() as conn, conn.transaction():
        now = time.time()
        # Only registrations with a quota are locked and counted (see registrations.lock_quotas).
        quotas = await registrations.lock_quotas(conn, [r for r in auto_registrations if r])
        counts = await devices.count_registration_devices(conn, list(quotas))
        for (account_id, product_id), items in by_product.items():
            stems = [stem for request, _ in items for stem in family_stems(request.hardware_id)]
            # The claims' ancestors (none for an ID without a -N suffix): their family heads.
            ancestors = [a for request, _ in items for a in hardware_id_ancestors(request.hardware_id)]
            keys = [r.idempotency_key for r, _ in items if r.idempotency_key]
            family = Family.of(
                await devices.load_family(conn, account_id, stems, ancestors),
                await decisions.load_idempotent(conn, product_id, keys),
                counts,
            )
            base = Context(
                kind="auto",
                registration_id="",
                secret_matches=secret_matches,
                product_id=product_id,
                limits=limits,
                now=now,
            )
            family.created = await devices.load_creations(
                conn, account_id, _creating(items, family, base), now - _longest_creation_window(limits)
            )
            scope = _Scope(out, family, account_id, product_id)
            alert = limits.wrong_keys_alert
            bulk_items = [r.hardware_id for r, a in items if a.kind == "bulk"]
            failures = (
                await decisions.failed_claims(
                    conn, product_id, bulk_items, REASON_BULK_NOT_LISTED, alert.window_s
                )
                if bulk_items and alert is not None
                else {}
            )
            desk = await _HookDesk.load(conn, items, family, now)
            for request, admission in items:
                claim = _claim(request)
                registration_id = admission.registration_id or ""
                denied = desk.denied(admission, claim) if desk is not None else None
                if denied is not None:
                    # The hook denied this attempt (its Idempotency-Key) before: the answer
                    # is reused, the hook not asked again, nothing reserved.
                    records.append(
                        DecisionRecord(
                            claim=claim,
                            verdict=Verdict("refused", reason=denied),
                            account_id=account_id,
                            product_id=product_id,
                            received_at=request.received_at,
                            protocol=request.protocol,
                        )
                    )
                    continue
                context = replace(
                    base,
                    kind="bulk" if admission.kind == "bulk" else "auto",
                    registration_id=registration_id,
                    max_devices=quotas.get(registration_id),
                )
                verdict = decide(claim, family, context)
                if context.kind == "bulk" and verdict.reason == REASON_BULK_NOT_LISTED and alert is not None:
                    _count_wrong_key(scope, alert, failures, claim)
                family.apply(claim, verdict)
                if context.kind == "auto":
                    _notice_creation_limits(scope, claim, verdict, context)
                if verdict.two_sources:
                    _notice_two_sources(scope, claim, verdict)
                record = DecisionRecord(
                    claim=claim,
                    verdict=verdict,
                    account_id=account_id,
                    product_id=product_id,
                    received_at=request.received_at,
                    protocol=request.protocol,
                )
                records.append(record)
                if desk is not None and admission.hooked:
                    desk.hold(out, record, registration_id, admission.kind == "auto")
            if desk is not None:
                desks.append(desk)
        await decisions.record_decisions(conn, [r for r in records if recorded(r.account_id)])
        for desk in desks:  # after the devices they reserve are written
            await desk.record(conn, out)
        await alerts.record(conn, out.sightings)
    return out


@dataclass
class _HookDesk:
    """One product's claims of a batch whose registration has a hook
    (docs/registration-hook.md): which attempts the hook denied before (their answer is
    reused), which registered devices are reserved for their hook, and the reservations and
    retries this batch adds, written in its transaction after the devices."""

    now: float
    by_call: dict[str, CallState]
    by_device: dict[str, CallState]
    new: dict[str, Reservation] = field(default_factory=dict)  # device ID -> its reservation
    attached: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)

    @classmethod
    async def load(
        cls,
        conn: Connection,
        items: Sequence[tuple[RegistrationRequested, CodeAdmission]],
        family: Family,
        now: float,
    ) -> _HookDesk | None:
        """None when no claim of ``items`` has a hook (no query then)."""
        hooked = [(r, a) for r, a in items if a.hooked]
        if not hooked:
            return None
        call_ids = [hook_rules.call_id(a.registration_id or "", _claim(r)) for r, a in hooked]
        # Reservations are registered devices (not yet provisioned) of the family.
        registered = [d.id for d in family.devices.values() if d.lifecycle == "registered"]
        states = await hooks.load_calls(conn, call_ids, registered)
        return cls(
            now=now,
            by_call={c.call_id: c for c in states},
            by_device={c.device_id: c for c in states if c.device_id and not c.final},
        )

    def denied(self, admission: CodeAdmission, claim: Claim) -> str | None:
        """The stored reason of this attempt's earlier denial, or None."""
        if not admission.hooked:
            return None
        state = self.by_call.get(hook_rules.call_id(admission.registration_id or "", claim))
        if state is None or state.outcome != "deny":
            return None
        return hook_rules.denied_reason(state.reason)

    def hold(self, out: _Outcome, record: DecisionRecord, registration_id: str, auto: bool) -> None:
        """Reserve ``record``'s claim for its hook, or attach a retry to its reservation;
        a claim that consults no hook (a refusal, a device already confirmed) is left alone.
        A reference-protocol claim of an auto registration (``auto``) is answered
        provisionally at once: its step 2 as without a hook, its step 5 pending until the
        hook allowed (docs/registration-hook.md, "The reference protocol")."""
        verdict, claim, device = record.verdict, record.claim, record.verdict.device
        if device is None or not record.account_id:
            return
        decided = asdict(_Answer.recorded(record).event())
        asked = hook_rules.hook_decision(verdict)
        if asked is not None:
            request = hook_rules.hook_request(
                claim, verdict, asked, record.product_id or "", registration_id, attestation=""
            )
            body = {k: v for k, v in asdict(request).items() if k not in ("call_id", "attestation")}
            reservation = Reservation(
                call_id=request.call_id,
                registration_id=registration_id,
                account_id=record.account_id,
                device_id=device.id,
                request_id=claim.request_id,
                request=body,
                decided=decided,
                reserved_until=datetime.fromtimestamp(self.now + hook_rules.RESERVATION_HOLD_S, UTC),
            )
            self.new[device.id] = reservation
            call_id = reservation.call_id
        elif verdict.decision == "same":
            pending = self.new.get(device.id)
            state = self.by_device.get(device.id)
            if pending is not None:  # a retry of a claim reserved earlier in this batch
                self.new[device.id] = replace(pending, request_id=claim.request_id, decided=decided)
                call_id = pending.call_id
            elif state is not None:
                self.attached.append((state.call_id, claim.request_id, decided))
                call_id = state.call_id
            else:
                return
        else:
            return
        out.held[claim.request_id] = HookRequested(
            call_id=call_id, registration_id=registration_id, request_id=claim.request_id
        )
        if auto and record.protocol == "compat":
            out.provisional[claim.request_id] = RegistrationOutcome(
                request_id=claim.request_id,
                status="pending",
                device_id=device.id,
                hardware_id=device.hardware_id,
                decision=verdict.decision,
                account_id=record.account_id,
            )

    async def record(self, conn: Connection, out: _Outcome) -> None:
        """Write the reservations and attach the retries; a retry whose row was answered
        since it was read (the ruling committed meanwhile) is released: it publishes its
        decision as a claim of a device no longer reserved."""
        await hooks.reserve(conn, list(self.new.values()))
        attached = await hooks.attach(conn, self.attached)
        for call_id, request_id, _ in self.attached:
            if call_id not in attached:
                out.held.pop(request_id, None)
                out.provisional.pop(request_id, None)


def _longest_creation_window(limits: Limits) -> float:
    """Seconds back to which what a source created can count against a limit (0: none)."""
    return max((w.window_s for w in (limits.clone_limit, limits.clone_rate) if w is not None), default=0.0)


def _creating(
    items: Sequence[tuple[RegistrationRequested, CodeAdmission]], family: Family, base: Context
) -> list[tuple[str, str]]:
    """The (family head, source) of each auto claim that may create a device and is a
    suffixed spelling of an existing device (its head is an ancestor), the batch decided in
    order on a copy of the family as if no limit applied (so that ``H`` created earlier in
    the batch is known; the real decisions create no more, so their heads are these or
    nearer, whose spellings these include). What their sources created under the head is
    loaded for these alone: a claim that is its own head counts from the family, and a
    retry, a device presenting its secret and a bulk claim create nothing."""
    trial = Family(dict(family.devices), dict(family.idempotent), dict(family.registration_devices))
    wanted = []
    for request, admission in items:
        if admission.kind != "auto":
            continue
        claim = _claim(request)
        context = replace(
            base, kind="auto", registration_id=admission.registration_id or "", limits=NO_LIMITS
        )
        verdict = decide(claim, trial, context)
        if verdict.created and request.source:
            head = trial.head(request.hardware_id)
            if head != request.hardware_id.lower():
                wanted.append((head, request.source))
        trial.apply(claim, verdict)
    return wanted


@dataclass(frozen=True)
class _Scope:
    """One product's claims of a batch, decided in the transaction on one family: where
    the alerts they raise are recorded."""

    out: _Outcome
    family: Family
    account_id: str
    product_id: str

    def sighting(
        self,
        kind: AlertKind,
        hardware_id: str,
        count: int,
        window_s: float | None,
        source: str = "",
        listed: bool | None = None,
    ) -> AlertSighting:
        """An occurrence of ``kind`` in this product (AlertSighting's fields)."""
        return AlertSighting(
            self.account_id, self.product_id, kind, hardware_id, count, window_s, source, listed
        )

    def notice(self, sighting: AlertSighting, *, raised: bool) -> None:
        """Record an occurrence of an alert; ``raised``: it crossed its threshold."""
        self.out.sightings.append(sighting)
        if raised:
            self.out.raised.append(sighting)


def _count_wrong_key(scope: _Scope, alert: PerWindow, failures: dict[str, int], claim: Claim) -> None:
    """A wrong key (or an unlisted hardware ID: the device cannot tell them apart, nor can
    this count) for the claimed hardware ID; at the threshold (``alert.count`` within
    ``alert.window_s``) and past it, an alert."""
    key = claim.hardware_id.lower()  # one hardware ID whatever its case (migration 0008)
    wrong_keys = failures.get(key, 0) + 1
    failures[key] = wrong_keys
    if wrong_keys < alert.count:
        return
    listed = scope.family.devices.get(key)
    sighting = scope.sighting(
        BULK_KEY_GUESSING,
        # one alert whatever case the guesser types: the registry's spelling, else lower case
        listed.hardware_id if listed is not None else key,
        wrong_keys,
        alert.window_s,
        # listed in this product: another product's row is as unlisted to this code
        listed=listed is not None
        and listed.product_id == scope.product_id
        and bool(listed.registration_key_digest),
    )
    scope.notice(sighting, raised=wrong_keys == alert.count)


def _notice_creation_limits(scope: _Scope, claim: Claim, verdict: Verdict, context: Context) -> None:
    """An auto registration's claim, recorded in the family: the alerts of what its source
    created. A source that reaches its clone rate or clone limit for one hardware ID (its
    family head: a suffixed spelling of an existing device counts with it) raises
    ``hardware_id_squatting`` (every later refusal by them updates the alert); the claim
    that takes an auto registration's last place raises ``quota_filled`` with its source."""
    family = scope.family
    reached = limit_reached(claim, verdict, family, context)
    if reached is not None:
        sighting = scope.sighting(
            HARDWARE_ID_SQUATTING,
            _head_name(family, claim),
            max(1, reached.count),
            reached.window_s,
            claim.source,
        )
        scope.notice(sighting, raised=reached.just_now)
    max_devices = context.max_devices
    if (
        verdict.created
        and max_devices is not None
        and family.registration_devices.get(context.registration_id, 0) == max_devices
    ):
        scope.notice(
            scope.sighting(QUOTA_FILLED, claim.hardware_id, max_devices, None, claim.source), raised=True
        )


def _head_name(family: Family, claim: Claim) -> str:
    """The family head the claim is counted under (one squatting alert for H, H-1,
    h-01-1... while H exists), as the device holding it spells it, else in lower case (a
    refused claim of an ID nobody holds is its own head): one alert whatever the case the
    squatter types."""
    head = family.head(claim.hardware_id)
    holder = family.devices.get(head)
    return holder.hardware_id if holder is not None else head


def _notice_two_sources(scope: _Scope, claim: Claim, verdict: Verdict) -> None:
    """A device reclaimed before "ready" from a source other than an earlier claim's since
    it was registered (each reclaim revokes the credentials the other holds): the alert
    ``two_sources_before_ready`` (``count``: the sources so far), raised when a source
    joins them; a reclaim from one of them updates it."""
    device = verdict.device
    if device is None:
        return
    recorded = scope.family.by_id(device.id)
    sources = recorded.claim_sources if recorded is not None else device.claim_sources
    sighting = scope.sighting(TWO_SOURCES_BEFORE_READY, device.hardware_id, len(sources), None, claim.source)
    scope.notice(sighting, raised=claim.source not in device.claim_sources)  # before this claim


async def apply_signals(pool: Pool, signals: Sequence[DeviceSignal]) -> None:
    """Confirmations ("ready") and heartbeats; a confirmation is also a sign of life. A
    confirmation of a credential generation the device no longer has (a reclaim before
    "ready" replaced it) is not applied (devices.MARK_PROVISIONED)."""
    ready = [(s.device_id, s.at, s.credential_generation) for s in signals if s.kind == "ready"]
    seen = [(s.device_id, s.at) for s in signals]  # a confirmation is a sign of life too
    await devices.apply_signals(pool, ready, seen)
