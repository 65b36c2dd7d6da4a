"""Deduplication's business logic: a batch of registration requests in, one registry
transaction, then the decided events (for provisioning) and refusals (for the intake).

Idempotent: a request decided before (a redelivered batch) is not decided again;
its stored decision is published again instead, so a crash between the database
commit and the sends loses nothing.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from shared.db import devices, products
from shared.db.devices import DecisionRecord, RegistryConflict, StoredDecision
from shared.db.pool import Pool
from shared.domain.admission import REASON_UNKNOWN_CODE, CodeAdmission, admission_refusal
from shared.domain.credentials import Keyring
from shared.domain.dedup import (
    REASON_BULK_NOT_LISTED,
    REASON_TOO_MANY_ATTEMPTS,
    Claim,
    Family,
    KnownDevice,
    Verdict,
    decide,
)
from shared.domain.identifiers import family_stems
from shared.events import DeviceSignal, RegistrationDecided, RegistrationOutcome, RegistrationRequested
from shared.metrics import PIPELINE_LATENCY, REGISTRATIONS

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 5


@dataclass
class Decisions:
    """What a batch produced, to publish once the transaction committed."""

    decided: list[RegistrationDecided] = field(default_factory=list)
    refused: list[RegistrationOutcome] = field(default_factory=list)


def _claim(request: RegistrationRequested) -> Claim:
    return Claim(
        request_id=request.request_id,
        hardware_id=request.hardware_id,
        fingerprint=request.fingerprint,
        secret_digest=request.secret_digest,
        registration_key_digest=request.registration_key_digest,
        idempotency_key=request.idempotency_key,
    )


def _replay(stored: StoredDecision) -> RegistrationDecided | RegistrationOutcome:
    if stored.decision == "refused" or stored.device_id is None:
        return RegistrationOutcome(
            request_id=stored.request_id, status="refused", reason=stored.reason, decision="refused"
        )
    return RegistrationDecided(
        request_id=stored.request_id,
        account_id=stored.account_id or "",
        product_id=stored.product_id or "",
        device_id=stored.device_id,
        hardware_id=stored.hardware_id,
        decision=stored.decision,
        credential_generation=stored.credential_generation,
    )


async def decide_batch(
    pool: Pool, keyring: Keyring, requests: Sequence[RegistrationRequested], guard: ClaimGuard | None = None
) -> Decisions:
    """Decide every request of a batch in one transaction; return what to publish."""
    out = Decisions()
    unique = list({r.request_id: r for r in requests}.values())
    already = await devices.decided(pool, [r.request_id for r in unique])
    for stored in already.values():
        replayed = _replay(stored)
        if isinstance(replayed, RegistrationOutcome):
            out.refused.append(replayed)
        else:
            out.decided.append(replayed)
    fresh = [r for r in unique if r.request_id not in already]
    if not fresh:
        return out
    admissions = await products.resolve_codes(pool, [r.bulk_identification_code for r in fresh])

    def secret_matches(device: KnownDevice, digest: str) -> bool:
        return keyring.device_secret_matches(device.id, device.credential_generation, digest)

    for attempt in range(1, MAX_CONFLICT_RETRIES + 1):
        try:
            records = await _decide_and_record(pool, fresh, admissions, secret_matches, guard or ClaimGuard())
            break
        except RegistryConflict:
            # Another instance took a hardware ID meanwhile (a rebalance): decide again on fresh state.
            log.warning(
                "hardware ID taken concurrently; deciding the batch again", extra={"attempt": attempt}
            )
            if attempt == MAX_CONFLICT_RETRIES:
                raise
    now = time.time()
    for record in records:
        verdict, device = record.verdict, record.verdict.device
        REGISTRATIONS.labels(verdict.decision).inc()
        PIPELINE_LATENCY.labels("decided").observe(max(0.0, now - record.received_at))
        if verdict.decision == "refused" or device is None:
            out.refused.append(
                RegistrationOutcome(
                    request_id=record.claim.request_id,
                    status="refused",
                    reason=verdict.reason,
                    decision="refused",
                )
            )
        else:
            out.decided.append(
                RegistrationDecided(
                    request_id=record.claim.request_id,
                    account_id=record.account_id or "",
                    product_id=record.product_id or "",
                    device_id=device.id,
                    hardware_id=device.hardware_id,
                    decision=verdict.decision,
                    credential_generation=device.credential_generation,
                    received_at=record.received_at,
                )
            )
    return out


@dataclass(frozen=True)
class ClaimGuard:
    """Brute-force guard of bulk claims: a wrong key counts against the hardware ID, and
    past ``limit`` refusals within the window a claim by key is refused whatever the key
    (a device presenting its device secret is not held back)."""

    limit: int = 10
    window_s: float = 900.0

    def check(self, claim: Claim, verdict: Verdict, failures: dict[str, int]) -> Verdict:
        if verdict.decision == "same":
            return verdict
        if failures.get(claim.hardware_id, 0) >= self.limit:
            return Verdict("refused", reason=REASON_TOO_MANY_ATTEMPTS)
        if verdict.reason == REASON_BULK_NOT_LISTED:
            failures[claim.hardware_id] = failures.get(claim.hardware_id, 0) + 1
        return verdict


async def _decide_and_record(
    pool: Pool,
    requests: Sequence[RegistrationRequested],
    admissions: dict[str, CodeAdmission],
    secret_matches: Callable[[KnownDevice, str], bool],
    guard: ClaimGuard,
) -> list[DecisionRecord]:
    records: list[DecisionRecord] = []
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

    async with pool.acquire() as conn, conn.transaction():
        for (account_id, product_id), items in by_product.items():
            stems = [stem for request, _ in items for stem in family_stems(request.hardware_id)]
            keys = [r.idempotency_key for r, _ in items if r.idempotency_key]
            family = Family.of(
                await devices.load_family(conn, account_id, stems),
                await devices.load_idempotent(conn, product_id, keys),
            )
            bulk_items = [r.hardware_id for r, a in items if a.kind == "bulk"]
            failures = (
                await devices.failed_claims(
                    conn, product_id, bulk_items, REASON_BULK_NOT_LISTED, guard.window_s
                )
                if bulk_items
                else {}
            )
            for request, admission in items:
                claim = _claim(request)
                kind: Literal["auto", "bulk"] = "bulk" if admission.kind == "bulk" else "auto"
                verdict = decide(
                    claim,
                    family,
                    kind=kind,
                    registration_id=admission.registration_id or "",
                    secret_matches=secret_matches,
                )
                if kind == "bulk":
                    verdict = guard.check(claim, verdict, failures)
                family.apply(claim, verdict)
                records.append(
                    DecisionRecord(
                        claim=claim,
                        verdict=verdict,
                        account_id=account_id,
                        product_id=product_id,
                        received_at=request.received_at,
                        protocol=request.protocol,
                    )
                )
        await devices.record_decisions(conn, records)
    return records


async def apply_signals(pool: Pool, signals: Sequence[DeviceSignal]) -> None:
    """Confirmations ("ready") and heartbeats; a confirmation is also a sign of life."""
    ready = [(s.device_id, s.at) for s in signals if s.kind == "ready"]
    seen = [(s.device_id, s.at) for s in signals if s.kind == "heartbeat"]
    await devices.apply_signals(pool, ready, seen)
