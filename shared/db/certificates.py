"""Device certificates: each account's issuing CA (its key sealed at rest), the
certificates issued to devices, their revocation, and what the account's CRL lists
(shared/migrations/0028_device_certificates.sql)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db.pool import Connection, Pool
from shared.domain.certificates import (
    DeviceCertificate,
    IssuingCa,
    RevocationReason,
    Revoked,
    new_issuing_ca,
    open_issuing_ca,
    seal_ca_key,
)

# The account (none: no such account) and its CA if it has one yet.
SELECT_CA = """
    SELECT c.certificate, c.sealed_key FROM accounts a
    LEFT JOIN issuing_cas c ON c.account_id = a.id WHERE a.id = $1"""
INSERT_CA = """
    INSERT INTO issuing_cas (account_id, certificate, sealed_key) VALUES ($1, $2, $3)
    ON CONFLICT (account_id) DO NOTHING"""
# The issuing read of a device: its account, its registration (an EST label must be it),
# and whether it may have a certificate now (enabled, of the credential generation the
# caller proved).
SELECT_DEVICE = """
    SELECT account_id::text, registration_id::text, hardware_id, disabled, credential_generation
    FROM devices WHERE id = $1"""
# Recorded only while the device is still enabled and at the credential generation the
# caller proved: the row is share-locked, so a disable, reset, delete or move either waits for
# this record (and then revokes it) or commits first (and nothing is recorded, or handed out).
# A batch of certificates (the intake's concurrent registrations) is one statement: its
# devices are locked in ID order (two batches never wait on each other in a cycle), and each
# certificate's conditions are checked against its device's row as locked (the newest
# version: a disable that committed meanwhile is seen).
RECORD_CERTIFICATES = """
    WITH input AS (
        SELECT * FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::text[], $5::bytea[],
                             $6::bytea[], $7::timestamptz[])
            AS t(device_id, generation, hardware_id, serial, key_sha256, der, not_after)),
    device AS (
        SELECT id, account_id, hardware_id, disabled, credential_generation FROM devices
        WHERE id = ANY($1::uuid[]) ORDER BY id FOR SHARE)
    INSERT INTO device_certificates
        (serial, account_id, device_id, hardware_id, public_key_sha256, certificate, not_after)
    SELECT i.serial, d.account_id, d.id, d.hardware_id, i.key_sha256, i.der, i.not_after
    FROM input i JOIN device d ON d.id = i.device_id
    WHERE NOT d.disabled AND d.credential_generation = i.generation AND d.hardware_id = i.hardware_id
    RETURNING serial"""
# A batch meeting a deadlock (with an operator's statement on several of its devices) or a
# serialization failure is sent again, this many times in all.
RECORD_ATTEMPTS = 3
SELECT_CURRENT = """
    SELECT serial, certificate, not_after, issued_at, revoked_at FROM device_certificates
    WHERE device_id = $1 ORDER BY issued_at DESC LIMIT 1"""
# A renewal proven by the current certificate's key: the newest unrevoked, unexpired
# certificate of that key in the account, and its device as it is now.
SELECT_BY_KEY = """
    SELECT c.device_id::text, d.registration_id::text, d.hardware_id, d.credential_generation
    FROM device_certificates c JOIN devices d ON d.id = c.device_id
    WHERE c.account_id = $1 AND c.public_key_sha256 = $2 AND c.revoked_at IS NULL
      AND c.not_after > now() AND NOT d.disabled
    ORDER BY c.issued_at DESC LIMIT 1"""
REVOKE_DEVICES = """
    UPDATE device_certificates SET revoked_at = now(), revocation_reason = $2
    WHERE device_id = ANY($1::uuid[]) AND revoked_at IS NULL AND not_after > now()
    RETURNING device_id::text, serial"""
SELECT_REVOKED = """
    SELECT serial, revoked_at, revocation_reason FROM device_certificates
    WHERE account_id = $1 AND revoked_at IS NOT NULL AND not_after > now()
    ORDER BY revoked_at"""
AUTO_REGISTRATION_ACCOUNT = "SELECT account_id::text FROM registrations WHERE id = $1 AND kind = 'auto'"


async def issuing_ca(pool: Pool, secret_key: bytes, account_id: str) -> IssuingCa | None:
    """The account's issuing CA (None: no such account; ``account_id`` a UUID), created on
    first use (a new P-256 key sealed with ``secret_key``; of concurrent creators, every
    one gets the first committed). ValueError when the stored key does not open with
    ``secret_key``."""
    row = await pool.fetchrow(SELECT_CA, account_id)
    if row is not None and row["certificate"] is None:
        created = new_issuing_ca(account_id)
        await pool.execute(INSERT_CA, account_id, created.der, seal_ca_key(secret_key, created))
        row = await pool.fetchrow(SELECT_CA, account_id)
    if row is None or row["certificate"] is None:  # no account (or deleted meanwhile)
        return None
    return open_issuing_ca(secret_key, account_id, row["certificate"], row["sealed_key"])


@dataclass(frozen=True)
class IssuingDevice:
    """What issuing a certificate to a device reads of it."""

    account_id: str
    registration_id: str
    hardware_id: str
    disabled: bool
    credential_generation: int


async def issuing_device(pool: Pool, device_id: str) -> IssuingDevice | None:
    """The device as issuing reads it (None: no such device)."""
    row = await pool.fetchrow(SELECT_DEVICE, device_id)
    if row is None:
        return None
    return IssuingDevice(
        row["account_id"],
        row["registration_id"],
        row["hardware_id"],
        row["disabled"],
        row["credential_generation"],
    )


@dataclass(frozen=True)
class CertificateRecord:
    """A certificate just signed for a device, to record if the device is still enabled,
    at ``credential_generation``, with ``hardware_id``."""

    device_id: str
    credential_generation: int
    hardware_id: str
    issued: DeviceCertificate


async def record_certificates(pool: Pool, records: Sequence[CertificateRecord]) -> list[bool]:
    """Record the certificates in one statement: for each, in order, False (nothing recorded:
    do not hand it out) when its device is gone, disabled, or no longer at its credential
    generation with its hardware ID. A deadlock or serialization failure is retried
    (RECORD_ATTEMPTS in all; the statement changed nothing), then raised."""
    if not records:
        return []
    arguments = (
        [r.device_id for r in records],
        [r.credential_generation for r in records],
        [r.hardware_id for r in records],
        [r.issued.serial for r in records],
        [r.issued.public_key_sha256 for r in records],
        [r.issued.der for r in records],
        [r.issued.not_after for r in records],
    )
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            rows = await pool.fetch(RECORD_CERTIFICATES, *arguments)
            break
        except asyncpg.TransactionRollbackError:
            if attempt == RECORD_ATTEMPTS:
                raise
    recorded = {r["serial"] for r in rows}
    return [r.issued.serial in recorded for r in records]


async def record_certificate(
    pool: Pool, device_id: str, credential_generation: int, hardware_id: str, issued: DeviceCertificate
) -> bool:
    """Record ``issued`` for the device (:func:`record_certificates`, alone)."""
    record = CertificateRecord(device_id, credential_generation, hardware_id, issued)
    return (await record_certificates(pool, [record]))[0]


@dataclass(frozen=True)
class IssuedCertificate:
    """A device's newest certificate as the registry keeps it."""

    serial: str
    der: bytes
    not_after: datetime
    issued_at: datetime
    revoked_at: datetime | None


async def current_certificate(pool: Pool, device_id: str) -> IssuedCertificate | None:
    """The device's newest certificate (revoked or not), or None."""
    row = await pool.fetchrow(SELECT_CURRENT, device_id)
    if row is None:
        return None
    return IssuedCertificate(
        row["serial"], row["certificate"], row["not_after"], row["issued_at"], row["revoked_at"]
    )


@dataclass(frozen=True)
class KeyHolder:
    """The device whose current certificate holds a key (a renewal proven by that key)."""

    device_id: str
    registration_id: str
    hardware_id: str
    credential_generation: int


async def holder_of_key(pool: Pool, account_id: str, key_sha256: bytes) -> KeyHolder | None:
    """The enabled device of the account whose unrevoked, unexpired certificate holds the
    key of SHA-256 ``key_sha256`` (SubjectPublicKeyInfo DER), or None."""
    row = await pool.fetchrow(SELECT_BY_KEY, account_id, key_sha256)
    if row is None:
        return None
    return KeyHolder(
        row["device_id"], row["registration_id"], row["hardware_id"], row["credential_generation"]
    )


async def revoke_devices(
    conn: Connection, device_ids: Sequence[str], reason: RevocationReason
) -> list[tuple[str, str]]:
    """Revoke every unexpired certificate of the devices, in the caller's transaction (the
    disable, reset, delete, move or reclaim before "ready" that is the reason):
    ``(device ID, serial)`` of each."""
    if not device_ids:
        return []
    return [(r["device_id"], r["serial"]) for r in await conn.fetch(REVOKE_DEVICES, list(device_ids), reason)]


async def revoked(pool: Pool, account_id: str) -> list[Revoked]:
    """What the account's CRL lists: its revoked certificates not yet expired."""
    return [
        Revoked(r["serial"], r["revoked_at"], r["revocation_reason"] or "")
        for r in await pool.fetch(SELECT_REVOKED, account_id)
    ]


async def auto_registration_account(pool: Pool, registration_id: str) -> str | None:
    """The account of an auto registration (an EST label), or None."""
    found: str | None = await pool.fetchval(AUTO_REGISTRATION_ACCOUNT, registration_id)
    return found
