"""Derived-key attestation in the registry (docs/device-identity.md): an auto
registration's sealed group keys (rotated one at a time, read by the operator to derive a
device key and by the intake to check a proof), and the nonces of accepted proofs, so that
every intake instance accepts a proof once. The keys are stored sealed
(shared.domain.derived_keys.GroupKeyBox); this module never sees them in the clear."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.db import audit
from shared.db.pool import Pool
from shared.db.products import CODES_CHANGED
from shared.db.throttle import notify
from shared.domain.accounts import Account
from shared.domain.derived_keys import KeySlot
from shared.errors import Conflict, NotFound

SELECT_SEALED = """
    SELECT attestation, primary_key_sealed, secondary_key_sealed FROM registrations
    WHERE id = $1 AND account_id = $2 AND kind = 'auto'"""
# One statement for both slots (KeySlot: $4 is 'primary' or 'secondary'), the other kept.
ROTATE = """
    UPDATE registrations
    SET primary_key_sealed = CASE WHEN $4 = 'primary' THEN $3 ELSE primary_key_sealed END,
        secondary_key_sealed = CASE WHEN $4 = 'secondary' THEN $3 ELSE secondary_key_sealed END,
        updated_at = now()
    WHERE id = $1 AND account_id = $2 AND kind = 'auto' AND attestation = 'derived_key'
    RETURNING product_id::text"""
# Any code of the product, current or revoked: a revoked code's claims still need a proof.
SELECT_OF_CODE = """
    SELECT r.id::text, r.attestation, r.primary_key_sealed, r.secondary_key_sealed, r.hardware_id_from
    FROM bulk_identification_codes c
    JOIN registrations r ON r.product_id = c.product_id AND r.kind = 'auto'
    WHERE c.code = $1"""
# The same for a batch of proofs (one statement: services/intake/attestation.py, NonceBook):
# the ordinals of the proofs accepted. Of proofs with the same key in one batch, only the
# first is inserted (DISTINCT ON, lowest ordinal) and so only the first can be accepted;
# ON CONFLICT DO NOTHING refuses a key recorded before, by any instance.
INSERT_NONCES = """
    WITH input AS (
        SELECT DISTINCT ON (r, lower(h), n) r, lower(h) AS h, n, e, i
        FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[])
            WITH ORDINALITY AS t(r, h, n, e, i)
        ORDER BY r, lower(h), n, i),
    inserted AS (
        INSERT INTO proof_nonces (registration_id, hardware_id, nonce, expires_at)
        SELECT r, h, n, e FROM input ORDER BY r, h, n  -- key order: concurrent batches never deadlock
        ON CONFLICT DO NOTHING
        RETURNING registration_id, hardware_id, nonce)
    SELECT input.i FROM input JOIN inserted
        ON inserted.registration_id = input.r AND inserted.hardware_id = input.h
        AND inserted.nonce = input.n"""
# A nonce is kept a minute past its proof's expiry: instances' clocks may differ a little.
DELETE_EXPIRED = "DELETE FROM proof_nonces WHERE expires_at < now() - interval '60 seconds'"


@dataclass(frozen=True)
class SealedGroupKeys:
    """An auto registration's attestation and, for ``derived_key``, its sealed group keys
    (``b""`` otherwise); for ``x509``, where its devices' certificates name their hardware IDs."""

    registration_id: str
    attestation: str
    primary_sealed: bytes
    secondary_sealed: bytes
    hardware_id_from: str = "cn"  # x509: where a device certificate names the hardware ID


async def sealed_group_keys(pool: Pool, account_id: str, registration_id: str) -> SealedGroupKeys:
    """The account's auto registration's sealed group keys; NotFound outside the account,
    Conflict (``rule: attestation=derived_key``) for a registration of another attestation."""
    row = await pool.fetchrow(SELECT_SEALED, registration_id, account_id)
    if row is None:
        raise NotFound(f"no auto registration {registration_id} in this account")
    if row["attestation"] != "derived_key":
        raise Conflict(
            f"auto registration {registration_id} attests by {row['attestation']}, not derived_key: "
            "it has no group keys",
            rule="attestation=derived_key",
        )
    return SealedGroupKeys(
        registration_id, row["attestation"], row["primary_key_sealed"], row["secondary_key_sealed"]
    )


async def rotate_group_key(
    pool: Pool, actor: Account, registration_id: str, slot: KeySlot, sealed: bytes
) -> None:
    """Replace one group key (``slot``) with ``sealed``; device keys derived from the old one
    stop proving anything at once (every intake drops its cached keys: the ``codes``
    invalidation). Audited as ``auto_registration.key_rotated`` (the slot, never a key)."""
    async with pool.acquire() as conn, conn.transaction():
        product_id = await conn.fetchval(ROTATE, registration_id, actor.id, sealed, slot)
        if product_id is None:
            await sealed_group_keys(pool, actor.id, registration_id)  # NotFound or Conflict
            raise NotFound(f"no auto registration {registration_id} in this account")
        await notify(conn, CODES_CHANGED)
        await audit.record(
            conn,
            actor,
            "auto_registration.key_rotated",
            "auto_registration",
            registration_id,
            {"product_id": product_id, "key": slot},
        )


async def record_derivation(
    pool: Pool, actor: Account, registration_id: str, hardware_id: str, slot: KeySlot
) -> None:
    """Audit that the operator derived the device key of ``hardware_id`` (never the key):
    ``auto_registration.device_key_derived``."""
    async with pool.acquire() as conn, conn.transaction():
        await audit.record(
            conn,
            actor,
            "auto_registration.device_key_derived",
            "auto_registration",
            registration_id,
            {"hardware_id": hardware_id, "key": slot},
        )


async def group_keys_of_code(pool: Pool, code: str) -> SealedGroupKeys | None:
    """The attestation of the auto registration whose product ``code`` (current or revoked)
    belongs to, or None (a bulk product's code, or no such code): one indexed read."""
    row = await pool.fetchrow(SELECT_OF_CODE, code)
    if row is None:
        return None
    return SealedGroupKeys(
        row["id"],
        row["attestation"],
        row["primary_key_sealed"] or b"",
        row["secondary_key_sealed"] or b"",
        row["hardware_id_from"],
    )


@dataclass(frozen=True)
class ProofNonce:
    """A valid proof's nonce to record: its registration, claimed hardware ID (any case),
    nonce and expiry (Unix seconds)."""

    registration_id: str
    hardware_id: str
    nonce: str
    expires: int


async def accept_nonces(pool: Pool, proofs: Sequence[ProofNonce]) -> list[bool]:
    """Record the proofs' nonces in one statement: for each, in order, True when it is the
    first record of (registration, hardware ID in any case, nonce), False for a replay (of
    an earlier record, by this instance or another, or of an earlier proof of the batch)."""
    if not proofs:
        return []
    rows = await pool.fetch(
        INSERT_NONCES,
        [p.registration_id for p in proofs],
        [p.hardware_id for p in proofs],
        [p.nonce for p in proofs],
        [datetime.fromtimestamp(p.expires, UTC) for p in proofs],
    )
    accepted = {int(r["i"]) for r in rows}
    return [index in accepted for index in range(1, len(proofs) + 1)]


async def accept_nonce(pool: Pool, registration_id: str, hardware_id: str, nonce: str, expires: int) -> bool:
    """Record a valid proof's nonce for (registration, hardware ID in any case); False when it
    was recorded already (a replay), by this instance or another (:func:`accept_nonces`)."""
    return (await accept_nonces(pool, [ProofNonce(registration_id, hardware_id, nonce, expires)]))[0]


async def forget_expired_nonces(pool: Pool) -> int:
    """Delete the nonces whose proofs expired (a minute ago); how many."""
    result = await pool.execute(DELETE_EXPIRED)
    return int(result.split()[-1])
