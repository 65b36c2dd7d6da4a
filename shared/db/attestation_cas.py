"""Attestation CAs of ``x509`` auto registrations in the registry (docs/device-identity.md,
"X.509 certificates"): the CA certificates an operator uploads per auto registration, their
verification (proof of possession of the CA's key), the serials revoked under each, and the
last CRL uploaded for each. Only public certificates and CRLs are stored: no private key is
ever uploaded.

Every change is audited (``attestation_ca.*``) in its own transaction and announced on the
``codes`` invalidation (shared.db.products.CODES_CHANGED), so every intake drops what it
trusts for the registration within the notification's delivery time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared.db import audit
from shared.db.pool import Connection, Pool
from shared.db.products import CODES_CHANGED
from shared.db.throttle import notify
from shared.domain.accounts import Account
from shared.errors import Conflict, NotFound

# Bounds on what one operator can store: a maker has a handful of CAs (one per factory or
# per year), and revokes by CRL when the list grows long.
MAX_CAS_PER_REGISTRATION = 20
MAX_REVOKED_SERIALS_PER_CA = 10_000

SELECT_X509_REGISTRATION = """
    SELECT attestation, (SELECT count(*) FROM attestation_cas c WHERE c.registration_id = r.id) AS cas
    FROM registrations r WHERE id = $1 AND account_id = $2 AND kind = 'auto' FOR UPDATE"""
INSERT_CA = """
    INSERT INTO attestation_cas (id, account_id, registration_id, certificate, fingerprint, subject, serial,
                                 not_after, verification_code)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"""
SELECT_CAS = """
    SELECT c.id::text, c.registration_id::text, c.certificate, c.fingerprint, c.subject, c.serial,
           c.not_after, c.verification_code, c.verified_at, c.crl_uploaded_at, c.crl_next_update,
           c.created_at,
           ARRAY(SELECT s.serial FROM attestation_ca_revocations s WHERE s.ca_id = c.id
                 ORDER BY s.revoked_at, s.serial) AS revoked_serials
    FROM attestation_cas c
    WHERE c.account_id = $1 AND ($2::uuid IS NULL OR c.registration_id = $2)
      AND ($3::uuid IS NULL OR c.id = $3)
    ORDER BY c.created_at, c.id"""
MARK_VERIFIED = """
    UPDATE attestation_cas SET verified_at = coalesce(verified_at, now())
    WHERE id = $1 AND account_id = $2 RETURNING registration_id::text"""
DELETE_CA = "DELETE FROM attestation_cas WHERE id = $1 AND account_id = $2 RETURNING registration_id::text"
LOCK_CA = """SELECT registration_id::text,
                    (SELECT count(*) FROM attestation_ca_revocations s WHERE s.ca_id = c.id) AS revoked
             FROM attestation_cas c WHERE id = $1 AND account_id = $2 FOR UPDATE"""
INSERT_REVOCATION = """INSERT INTO attestation_ca_revocations (ca_id, serial) VALUES ($1, $2)
                       ON CONFLICT DO NOTHING RETURNING true"""
DELETE_REVOCATION = "DELETE FROM attestation_ca_revocations WHERE ca_id = $1 AND serial = $2 RETURNING true"
SET_CRL = """UPDATE attestation_cas SET crl = $3, crl_uploaded_at = now(), crl_next_update = $4
             WHERE id = $1 AND account_id = $2 RETURNING registration_id::text"""
SELECT_VERIFIED_DERS = "SELECT certificate FROM attestation_cas WHERE verified_at IS NOT NULL ORDER BY id"
# What an intake trusts for a code's registration: its verified CAs, their revoked serials
# and CRLs, and where the hardware ID is read (any code of the product, current or revoked,
# as shared.db.attestation.SELECT_OF_CODE).
SELECT_TRUST_OF_REGISTRATION = """
    SELECT c.id::text, c.certificate, c.verified_at IS NOT NULL AS verified, c.crl,
           ARRAY(SELECT s.serial FROM attestation_ca_revocations s WHERE s.ca_id = c.id) AS revoked_serials
    FROM attestation_cas c WHERE c.registration_id = $1 ORDER BY c.id"""


@dataclass(frozen=True)
class AttestationCa:
    """One uploaded CA: its certificate (DER) and what the operator sees of it; the
    ``verification_code`` to sign (kept after verification: it proves nothing by itself),
    ``verified_at`` None while unverified, the serials revoked under it (hex), and its CRL's
    upload time and nextUpdate, if one was uploaded."""

    id: str
    registration_id: str
    certificate: bytes
    fingerprint: str
    subject: str
    serial: str
    not_after: datetime
    verification_code: str
    verified_at: datetime | None
    crl_uploaded_at: datetime | None
    crl_next_update: datetime | None
    created_at: datetime
    revoked_serials: tuple[str, ...]


@dataclass(frozen=True)
class NewCa:
    """A CA certificate checked for upload (shared.domain.x509_attestation.check_ca_certificate)."""

    id: str
    certificate: bytes
    fingerprint: str
    subject: str
    serial: str
    not_after: datetime
    verification_code: str


@dataclass(frozen=True)
class StoredTrust:
    """An attestation CA as the intake reads it: DER certificate, verified or not, revoked
    serials (hex) and the uploaded CRL's DER (None: none uploaded)."""

    id: str
    certificate: bytes
    verified: bool
    revoked_serials: tuple[str, ...]
    crl: bytes | None


def _ca(row: Any) -> AttestationCa:
    return AttestationCa(
        row["id"],
        row["registration_id"],
        bytes(row["certificate"]),
        row["fingerprint"],
        row["subject"],
        row["serial"],
        row["not_after"],
        row["verification_code"],
        row["verified_at"],
        row["crl_uploaded_at"],
        row["crl_next_update"],
        row["created_at"],
        tuple(row["revoked_serials"]),
    )


async def _record(conn: Connection, actor: Account, action: str, ca_id: str, changes: dict[str, Any]) -> None:
    await notify(conn, CODES_CHANGED)
    await audit.record(conn, actor, f"attestation_ca.{action}", "attestation_ca", ca_id, changes)


async def add_ca(pool: Pool, actor: Account, registration_id: str, ca: NewCa) -> AttestationCa:
    """Upload ``ca`` to the account's auto registration (unverified). NotFound outside the
    account; Conflict for a registration not in ``x509`` attestation
    (``rule: attestation=x509``), past :data:`MAX_CAS_PER_REGISTRATION`, or for a CA uploaded
    there already (``rule: unique``). Audited as ``attestation_ca.added``."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(SELECT_X509_REGISTRATION, registration_id, actor.id)
        if row is None:
            raise NotFound(f"no auto registration {registration_id} in this account")
        if row["attestation"] != "x509":
            raise Conflict(
                f"auto registration {registration_id} attests by {row['attestation']}, not x509: "
                "it takes no CA certificates",
                rule="attestation=x509",
            )
        if row["cas"] >= MAX_CAS_PER_REGISTRATION:
            raise Conflict(
                f"an auto registration holds at most {MAX_CAS_PER_REGISTRATION} CA certificates: "
                "delete one first",
                rule=f"max_cas={MAX_CAS_PER_REGISTRATION}",
            )
        try:
            await conn.execute(
                INSERT_CA,
                ca.id,
                actor.id,
                registration_id,
                ca.certificate,
                ca.fingerprint,
                ca.subject,
                ca.serial,
                ca.not_after,
                ca.verification_code,
            )
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(
                "this CA certificate is uploaded to this auto registration already",
                field="certificate",
                rule="unique",
            ) from exc
        changes = {"registration_id": registration_id, "subject": ca.subject, "fingerprint": ca.fingerprint}
        await _record(conn, actor, "added", ca.id, changes)
    return await get_ca(pool, actor.id, ca.id)


async def list_cas(pool: Pool, account_id: str, registration_id: str | None = None) -> list[AttestationCa]:
    """The account's attestation CAs (of one auto registration, with ``registration_id``),
    oldest first."""
    return [_ca(r) for r in await pool.fetch(SELECT_CAS, account_id, registration_id, None)]


async def get_ca(pool: Pool, account_id: str, ca_id: str) -> AttestationCa:
    """One of the account's attestation CAs; NotFound otherwise (another account's too)."""
    row = await pool.fetchrow(SELECT_CAS, account_id, None, ca_id)
    if row is None:
        raise NotFound(f"no attestation CA {ca_id} in this account")
    return _ca(row)


async def mark_verified(pool: Pool, actor: Account, ca_id: str) -> AttestationCa:
    """Record that the operator proved possession of the CA's key (the caller checked the
    verification certificate); a CA verified already keeps its time. Audited as
    ``attestation_ca.verified``."""
    async with pool.acquire() as conn, conn.transaction():
        registration_id = await conn.fetchval(MARK_VERIFIED, ca_id, actor.id)
        if registration_id is None:
            raise NotFound(f"no attestation CA {ca_id} in this account")
        await _record(conn, actor, "verified", ca_id, {"registration_id": registration_id})
    return await get_ca(pool, actor.id, ca_id)


async def delete_ca(pool: Pool, actor: Account, ca_id: str) -> AttestationCa:
    """Delete an attestation CA (and its revocations and CRL); what it was. Devices it
    attests stop registering by it at once; registered devices keep their secrets. Audited
    as ``attestation_ca.deleted``."""
    before = await get_ca(pool, actor.id, ca_id)
    async with pool.acquire() as conn, conn.transaction():
        registration_id = await conn.fetchval(DELETE_CA, ca_id, actor.id)
        if registration_id is None:
            raise NotFound(f"no attestation CA {ca_id} in this account")
        changes = {
            "registration_id": registration_id,
            "subject": before.subject,
            "fingerprint": before.fingerprint,
        }
        await _record(conn, actor, "deleted", ca_id, changes)
    return before


async def change_revocation(pool: Pool, actor: Account, ca_id: str, serial: str, *, revoked: bool) -> bool:
    """Add (``revoked``) or remove a serial (lower-case hex) of the CA's revocation list;
    whether the list changed. Bounded by :data:`MAX_REVOKED_SERIALS_PER_CA` (Conflict).
    Audited as ``attestation_ca.serial_revoked`` / ``.serial_unrevoked`` when it changed."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(LOCK_CA, ca_id, actor.id)
        if row is None:
            raise NotFound(f"no attestation CA {ca_id} in this account")
        if revoked and row["revoked"] >= MAX_REVOKED_SERIALS_PER_CA:
            raise Conflict(
                f"a CA holds at most {MAX_REVOKED_SERIALS_PER_CA} revoked serials: upload a CRL instead",
                rule=f"max_revoked_serials={MAX_REVOKED_SERIALS_PER_CA}",
            )
        changed = await conn.fetchval(INSERT_REVOCATION if revoked else DELETE_REVOCATION, ca_id, serial)
        if changed:
            action = "serial_revoked" if revoked else "serial_unrevoked"
            await _record(
                conn, actor, action, ca_id, {"registration_id": row["registration_id"], "serial": serial}
            )
    return bool(changed)


async def set_crl(
    pool: Pool, actor: Account, ca_id: str, der: bytes, next_update: datetime | None, entries: int
) -> AttestationCa:
    """Store the CA's CRL (DER, checked by the caller: its issuer and signature), replacing
    the one before. Audited as ``attestation_ca.crl_uploaded`` (its entry count)."""
    async with pool.acquire() as conn, conn.transaction():
        registration_id = await conn.fetchval(SET_CRL, ca_id, actor.id, der, next_update)
        if registration_id is None:
            raise NotFound(f"no attestation CA {ca_id} in this account")
        await _record(
            conn, actor, "crl_uploaded", ca_id, {"registration_id": registration_id, "entries": entries}
        )
    return await get_ca(pool, actor.id, ca_id)


async def stored_crl(pool: Pool, account_id: str, ca_id: str) -> bytes | None:
    """The CA's uploaded CRL (DER), or None."""
    row = await pool.fetchrow(
        "SELECT crl FROM attestation_cas WHERE id = $1 AND account_id = $2", ca_id, account_id
    )
    if row is None:
        raise NotFound(f"no attestation CA {ca_id} in this account")
    return bytes(row["crl"]) if row["crl"] is not None else None


async def verified_ca_ders(pool: Pool) -> list[bytes]:
    """The DER of every *verified* attestation CA, of every account: what the intake's TLS
    listener accepts client certificate chains to at the handshake. Which CA a device may
    use is decided afterwards, per auto registration (shared.domain.x509_attestation)."""
    return [bytes(r["certificate"]) for r in await pool.fetch(SELECT_VERIFIED_DERS)]


async def trust_of_registration(pool: Pool, registration_id: str) -> list[StoredTrust]:
    """Every attestation CA of one auto registration (verified or not: an unverified one is
    reported as such), with its revocations: one indexed read."""
    rows = await pool.fetch(SELECT_TRUST_OF_REGISTRATION, registration_id)
    return [
        StoredTrust(
            r["id"],
            bytes(r["certificate"]),
            r["verified"],
            tuple(r["revoked_serials"]),
            bytes(r["crl"]) if r["crl"] is not None else None,
        )
        for r in rows
    ]
