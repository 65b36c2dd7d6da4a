"""Checking a device's proof of its derived key or its X.509 certificate
(docs/device-identity.md), before its claim is published: which attestation a code's auto
registration takes, and its group keys or its attestation CAs, kept for a few seconds as
the code cache keeps codes.

A cached entry is dropped on every ``codes`` invalidation (a code rotation, a group key's
rotation, a product's lock or deletion, any change of an attestation CA:
shared.db.products.CODES_CHANGED), lives at most
``ttl_s`` (FLEETREG_CODE_CACHE_SECONDS), and is kept only while the invalidation listener
runs and no invalidation arrived during its read: a rotated-out group key proves nothing
after the invalidation's delivery time (milliseconds).

The group keys are opened here (FLEETREG_SECRET_KEY) and held in memory only; they, the
derived device keys and the proofs' MACs are never logged.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Literal

from cryptography import x509

from shared.batching import Coalescer
from shared.client_certs import ClientCertificate
from shared.db import attestation, attestation_cas
from shared.db.attestation import ProofNonce
from shared.db.pool import Pool
from shared.domain import derived_keys, x509_attestation
from shared.domain.derived_keys import GroupKeyBox, Proof
from shared.domain.x509_attestation import HARDWARE_ID_SOURCES, HardwareIdFrom, Refusal, TrustedCa
from shared.metrics import X509_REFUSALS


@dataclass(frozen=True)
class CodeAttestation:
    """What a code's registration takes: ``attestation`` (``code`` for a bulk product's code
    too: its rows' keys are checked by deduplication), and for ``derived_key`` its ID and
    opened group keys (primary, secondary), for ``x509`` its ID, attestation CAs (their
    CRLs parsed once here) and where a certificate names the hardware ID."""

    attestation: str
    registration_id: str = ""
    group_keys: tuple[str, ...] = ()
    cas: tuple[TrustedCa, ...] = ()  # x509: its attestation CAs, verified or not
    hardware_id_from: HardwareIdFrom = "cn"


CODE_ATTESTATION = CodeAttestation("code")

Check = Literal["proven", "no_proof", "wrong", "time", "replayed"]


class GroupKeyCache:
    def __init__(self, box: GroupKeyBox, ttl_s: float, max_entries: int = 10_000) -> None:
        self._box = box
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, CodeAttestation]] = OrderedDict()
        self._generation = 0
        self._listening = False

    async def of_code(self, pool: Pool, code: str) -> CodeAttestation:
        """The attestation of ``code``'s registration (one indexed read when not cached)."""
        entry = self._entries.get(code)
        if entry is not None and entry[0] >= time.monotonic():
            return entry[1]
        generation = self._generation
        found = await attestation.group_keys_of_code(pool, code)
        shown = CODE_ATTESTATION
        if found is not None and found.attestation == "derived_key":
            keys = (
                self._box.open(found.registration_id, "primary", found.primary_sealed),
                self._box.open(found.registration_id, "secondary", found.secondary_sealed),
            )
            shown = CodeAttestation("derived_key", found.registration_id, keys)
        elif found is not None and found.attestation == "x509":
            shown = await _x509_attestation(pool, found.registration_id, found.hardware_id_from)
        if self._ttl_s > 0 and self._listening and generation == self._generation:
            self._entries[code] = (time.monotonic() + self._ttl_s, shown)
            self._entries.move_to_end(code)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return shown

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()

    def listening(self, up: bool) -> None:
        """The invalidation listener connected (True) or lost its connection (False)."""
        self._listening = up
        self.clear()


class NonceBook:
    """Records valid proofs' nonces (shared.db.attestation.accept_nonces): the proofs of
    concurrent registrations share one statement (shared.batching.Coalescer: a lone proof
    is sent at once), so a derived-key boot storm costs no round trip of its own per device
    and no lock on its registration's row per device."""

    def __init__(self, pool: Pool) -> None:
        self._batches: Coalescer[ProofNonce, bool] = Coalescer(partial(attestation.accept_nonces, pool))

    async def accept(self, registration_id: str, hardware_id: str, nonce: str, expires: int) -> bool:
        """True when the nonce is recorded now; False for a replay (recorded before)."""
        return await self._batches.submit(ProofNonce(registration_id, hardware_id, nonce, expires))


async def _x509_attestation(pool: Pool, registration_id: str, hardware_id_from: str) -> CodeAttestation:
    """An x509 registration's CAs as verification takes them (stored certificates and CRLs
    were checked at upload: parsed here, not checked again)."""
    trust = await attestation_cas.trust_of_registration(pool, registration_id)
    cas = tuple(
        TrustedCa(
            t.id,
            x509.load_der_x509_certificate(t.certificate),
            t.verified,
            frozenset(int(serial, 16) for serial in t.revoked_serials),
            x509_attestation.crl_serials(x509.load_der_x509_crl(t.crl)) if t.crl is not None else frozenset(),
        )
        for t in trust
    )
    source: HardwareIdFrom = next((s for s in HARDWARE_ID_SOURCES if s == hardware_id_from), "cn")
    return CodeAttestation("x509", registration_id, cas=cas, hardware_id_from=source)


async def check_proof(
    nonces: NonceBook, found: CodeAttestation, hardware_id: str, proof: Proof | None, now: float
) -> Check:
    """Whether a claim of ``hardware_id`` proves the device key of ``found``'s registration:
    ``proven`` (its nonce now recorded, on every instance: shared/db/attestation.py),
    ``no_proof``, ``wrong`` (no group key made it), ``time`` (a right MAC whose expiry is
    past or too far ahead of ``now``: a device without a clock) or ``replayed`` (its nonce
    was accepted before). The MAC is checked first, so that only a device holding the key
    learns anything about time or nonces."""
    if proof is None:
        return "no_proof"
    if not derived_keys.proof_matches(found.group_keys, hardware_id, proof):
        return "wrong"
    if not derived_keys.proof_time_ok(proof.expires, now):
        return "time"
    if not await nonces.accept(found.registration_id, hardware_id, proof.nonce, proof.expires):
        return "replayed"
    return "proven"


def check_certificate(
    found: CodeAttestation, hardware_id: str, presented: ClientCertificate | None, now: datetime
) -> str | None:
    """The refusal reason of a claim of ``hardware_id`` in ``found``'s x509 registration, or
    None when ``presented`` attests it: a certificate chaining to one of the registration's
    verified CAs (shared.domain.x509_attestation.verify_device_certificate) that names that
    hardware ID (any case: one hardware ID to the registry). Counted in
    ``fleetreg_x509_refusals_total{rule}``."""
    if presented is None:
        X509_REFUSALS.labels("no_certificate").inc()
        return x509_attestation.REASON_NO_CERTIFICATE
    result = x509_attestation.verify_device_certificate(
        presented.leaf, presented.chain, found.cas, now, found.hardware_id_from
    )
    if isinstance(result, str) and result.lower() != hardware_id.lower():
        result = Refusal(
            "hardware_id_mismatch",
            f"hardware_id is not the one the device certificate names in its {found.hardware_id_from}",
        )
    if isinstance(result, Refusal):
        X509_REFUSALS.labels(result.rule).inc()
        return x509_attestation.REASON_CERTIFICATE_PREFIX + result.reason
    return None
