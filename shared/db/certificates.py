"""Device certificates: each account's issuing CA (its key sealed at rest), the
certificates issued to devices, their revocation, and what the account's CRL lists
(shared/migrations/0028_device_certificates.sql)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from shared.db import audit
from shared.db.pool import Connection, Pool
from shared.domain.accounts import Account
from shared.domain.certificates import (
    DeviceCertificate,
    IssuingCa,
    RevocationReason,
    Revoked,
    new_issuing_ca,
    open_issuing_ca,
    seal_ca_key,
)
from shared.domain.uploaded_ca import comparable_name

# The account (none: no such account) and its CA if it has one yet.
SELECT_CA = """
    SELECT c.certificate, c.sealed_key, c.chain, c.uploaded_at FROM accounts a
    LEFT JOIN issuing_cas c ON c.account_id = a.id WHERE a.id = $1"""
INSERT_CA = """
    INSERT INTO issuing_cas (account_id, certificate, sealed_key) VALUES ($1, $2, $3)
    ON CONFLICT (account_id) DO NOTHING"""
# The advisory lock class of an account's issuing CA (with hashtext(account ID)): shared by
# each issuance, exclusive by an upload. Two-key advisory locks never meet the migrations'
# one-key lock (shared/db/migrations.py).
# 1718773601 = 0x66726361, "frca", written into the statements below.
# The issuing read of a device: its account, its registration (an EST label must be it),
# and whether it may have a certificate now (enabled, of the credential generation the
# caller proved).
SELECT_DEVICE = """
    SELECT account_id::text, registration_id::text, hardware_id, disabled, credential_generation
    FROM devices WHERE id = $1"""
# Recorded only while the device is still enabled and at the credential generation the
# caller proved. The row is locked (FOR NO KEY UPDATE, which foreign keys' KEY SHARE does
# not wait for) for the rest of the transaction: a disable, reset, delete or move either
# waits for this record (and then revokes it) or commits first (and nothing is recorded, or
# handed out); and two issuances for one device take turns, so the count below (a statement
# of its own, whose snapshot is taken once the lock is held) sees every certificate the
# other committed: parallel calls on several instances never pass the cap.
# The device's account's issuing CA is held too, shared (an advisory lock: in the lock
# manager's memory, no write to the CA's row at every issuance): an upload replacing the CA
# (which takes it exclusive before counting the unexpired certificates) either waits for
# this record and then sees it (409), or commits first and the compare below (a statement
# whose snapshot is taken once the lock is held) finds the caller's CA stale: nothing signed.
# A batch of concurrent issuances (record_certificates) locks all its devices in one
# statement and records all its certificates in one more: one transaction, hence one
# foreign-key lock of the account's row, per batch instead of per device (hundreds of
# transactions holding KEY SHARE on one account row made Postgres build a MultiXact per
# locker, and halved a CSR storm's rate).
LOCK_DEVICES = """
    SELECT id::text, account_id::text, hardware_id, disabled, credential_generation,
           pg_advisory_xact_lock_shared(1718773601, hashtext(account_id::text))
    FROM devices WHERE id = ANY($1::uuid[])
    ORDER BY id
    FOR NO KEY UPDATE"""
# Rows are locked in the order of their IDs (the sort runs below the row locking), so two
# batches on two instances that share devices take turns instead of deadlocking.
# Whether each account's CA is still the caller's, and each device's unexpired certificates,
# revoked or not (a revoked one is in the CRL, an unrevoked one will be at the device's
# next reset): the cap counts both.
SELECT_CAS = "SELECT account_id::text, certificate FROM issuing_cas WHERE account_id = ANY($1::uuid[])"
SELECT_UNEXPIRED = """
    SELECT d.id::text, ARRAY(SELECT not_after FROM device_certificates c
                             WHERE c.device_id = d.id AND c.not_after > now() ORDER BY not_after) AS held
    FROM unnest($1::uuid[]) AS d(id)"""
INSERT_CERTIFICATES = """
    INSERT INTO device_certificates
        (serial, account_id, device_id, hardware_id, public_key_sha256, certificate, not_after)
    SELECT r.serial, d.account_id, d.id, d.hardware_id, r.key_sha256, r.der, r.not_after
    FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::bytea[], $5::timestamptz[])
         AS r(device_id, serial, key_sha256, der, not_after)
    JOIN devices d ON d.id = r.device_id"""
SELECT_CURRENT = """
    SELECT serial, certificate, not_after, issued_at, revoked_at FROM device_certificates
    WHERE device_id = $1 ORDER BY issued_at DESC LIMIT 1"""
# A renewal proven by the current certificate's key: the newest unrevoked, unexpired
# certificate of that key in the account, and its device as it is now.
SELECT_BY_KEY = """
    SELECT c.device_id::text, d.registration_id::text, d.hardware_id, d.credential_generation,
           c.serial, c.certificate, c.not_after, c.issued_at
    FROM device_certificates c JOIN devices d ON d.id = c.device_id
    WHERE c.account_id = $1 AND c.public_key_sha256 = $2 AND c.revoked_at IS NULL
      AND c.not_after > now() AND NOT d.disabled
    ORDER BY c.issued_at DESC LIMIT 1"""
# Each account whose CRL changes is announced (``crl:<account ID>`` on fleetreg_invalidate,
# delivered when the transaction commits, one per account: Postgres folds a transaction's
# equal payloads), so each intake drops that account's kept CRL only.
REVOKE_DEVICES = """
    WITH revoked AS (
        UPDATE device_certificates SET revoked_at = now(), revocation_reason = $2
        WHERE device_id = ANY($1::uuid[]) AND revoked_at IS NULL AND not_after > now()
        RETURNING device_id, serial, account_id)
    SELECT device_id::text, serial, pg_notify('fleetreg_invalidate', 'crl:' || account_id::text)
    FROM revoked"""
SELECT_REVOKED = """
    SELECT serial, revoked_at, revocation_reason FROM device_certificates
    WHERE account_id = $1 AND revoked_at IS NOT NULL AND not_after > now()
    ORDER BY revoked_at"""
# A client certificate presented for EST: the certificate of that serial in the account and
# its device as it is now (none: a deleted device, whose certificates are revoked anyway).
SELECT_BY_SERIAL = """
    SELECT c.certificate, c.not_after, c.revoked_at, c.device_id::text,
           d.registration_id::text, d.disabled, d.credential_generation
    FROM device_certificates c LEFT JOIN devices d ON d.id = c.device_id
    WHERE c.account_id = $1 AND c.serial = $2"""
# Replacing the CA (an upload): the CA's lock taken exclusive against issuances first
# (LOCK_DEVICES), then the row (none: no CA yet), then the account's unexpired certificates
# counted (revoked ones too: they are in the CRL).
LOCK_CA_EXCLUSIVE = "SELECT pg_advisory_xact_lock(1718773601, hashtext($1::uuid::text))"
# Uploads take turns (rare; the subject check below must see every other one committed).
LOCK_UPLOADS = "SELECT pg_advisory_xact_lock(1718773601, 0)"
SELECT_OTHER_UPLOADED = (
    "SELECT certificate FROM issuing_cas WHERE uploaded_at IS NOT NULL AND account_id <> $1"
)
LOCK_CA = "SELECT certificate, chain, uploaded_at FROM issuing_cas WHERE account_id = $1 FOR UPDATE"
COUNT_UNEXPIRED = "SELECT count(*) FROM device_certificates WHERE account_id = $1 AND not_after > now()"
# Every intake drops its kept CA and CRL of the account (services/intake/certificates.py).
REPLACE_CA = """
    UPDATE issuing_cas SET certificate = $2, sealed_key = $3, chain = $4, uploaded_at = $5,
        created_at = $5
    WHERE account_id = $1
    RETURNING pg_notify('fleetreg_invalidate', 'issuer:' || account_id::text)"""
SELECT_CA_CERTIFICATES = "SELECT certificate FROM issuing_cas ORDER BY account_id"
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
    return open_issuing_ca(
        secret_key,
        account_id,
        row["certificate"],
        row["sealed_key"],
        tuple(row["chain"] or ()),
        row["uploaded_at"],
    )


@dataclass(frozen=True)
class NotReplaced:
    """Why an upload changed nothing: ``held`` unexpired device certificates of the current
    CA, or (``held`` 0) another account's issuing CA has the same subject."""

    held: int


async def replace_issuing_ca(
    pool: Pool, secret_key: bytes, ca: IssuingCa, actor: Account, fingerprint: str
) -> NotReplaced | None:
    """Make ``ca`` (uploaded, its ``uploaded_at`` set) the account's issuing CA, its key
    sealed as a self-made one's, while the account holds no unexpired device certificate
    (revoked or not) and no other account's uploaded CA has its subject (compared as relying
    parties do: shared.domain.uploaded_ca.comparable_name; a relying party
    finds a CRL by its issuer's name: two accounts' CRLs of one issuer would each hide the
    other's revocations); audited (``issuing_ca.uploaded``: its subject and the SHA-256
    ``fingerprint`` of its certificate, never its key) in the same transaction. None when
    replaced (every intake is told: ``issuer:<account ID>``) or when ``ca`` is already the
    account's uploaded CA with this chain (a retried PUT: nothing written, not audited,
    whatever certificates it issued meanwhile), NotReplaced otherwise (nothing changed).
    The account's CA row must exist (:func:`issuing_ca` first)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(LOCK_UPLOADS)
        await conn.execute(LOCK_CA_EXCLUSIVE, ca.account_id)
        current = await conn.fetchrow(LOCK_CA, ca.account_id)
        if current is None:
            raise LookupError("the account has no issuing CA row")
        if (
            current["uploaded_at"] is not None
            and bytes(current["certificate"]) == ca.der
            and tuple(current["chain"]) == ca.chain
        ):
            return None  # the same upload again (a retried PUT): nothing to change
        held: int = await conn.fetchval(COUNT_UNEXPIRED, ca.account_id)
        if held:
            return NotReplaced(held)
        for row in await conn.fetch(SELECT_OTHER_UPLOADED, ca.account_id):
            theirs = x509.load_der_x509_certificate(row["certificate"]).subject
            if comparable_name(theirs) == comparable_name(ca.certificate.subject):
                return NotReplaced(0)
        await conn.execute(
            REPLACE_CA, ca.account_id, ca.der, seal_ca_key(secret_key, ca), list(ca.chain), ca.uploaded_at
        )
        await audit.record(
            conn,
            actor,
            "issuing_ca.uploaded",
            "account",
            ca.account_id,
            {"subject": ca.certificate.subject.rfc4514_string(), "fingerprint_sha256": fingerprint},
        )
        return None


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
class StaleCa:
    """Nothing signed or recorded: the account's issuing CA is no longer the caller's (an
    upload replaced it); read it again."""


@dataclass(frozen=True)
class AtCertificateLimit:
    """Nothing recorded: the device holds ``held`` unexpired certificates, at least the
    cap; ``frees_at``: when enough of them expire for one more."""

    held: int
    frees_at: datetime


@dataclass(frozen=True)
class CertificateRequest:
    """One issuance: sign (``sign()``, called with the device row locked) and record a
    certificate for ``device_id`` while it is enabled, at ``credential_generation`` with
    ``hardware_id``, and its account's CA is still ``ca_der`` (the signer's)."""

    device_id: str
    credential_generation: int
    hardware_id: str
    sign: Callable[[], DeviceCertificate]
    ca_der: bytes


Recorded = DeviceCertificate | AtCertificateLimit | StaleCa | None


async def record_certificate(
    pool: Pool,
    device_id: str,
    credential_generation: int,
    hardware_id: str,
    sign: Callable[[], DeviceCertificate],
    limit: int,
    ca_der: bytes,
) -> Recorded:
    """One issuance (:func:`record_certificates` of one request); what ``sign()`` raised is
    raised."""
    (outcome,) = await record_certificates(
        pool, [CertificateRequest(device_id, credential_generation, hardware_id, sign, ca_der)], limit
    )
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


async def record_certificates(
    pool: Pool, requests: Sequence[CertificateRequest], limit: int
) -> list[Recorded | Exception]:
    """Sign and record each request's certificate while its device holds fewer than
    ``limit`` unexpired certificates (revoked or not), in one transaction; one outcome per
    request, in order: the certificate recorded, AtCertificateLimit (nothing signed or
    recorded) at the cap, None (nothing recorded: do not hand anything out) when the device
    is gone, disabled, or no longer at the request's generation and hardware ID, StaleCa
    when the account's CA is no longer the request's, or the exception its ``sign()``
    raised (the other requests are recorded all the same). Decided under the devices' row
    locks: concurrent calls, on any number of instances, record at most ``limit`` a
    device, and two requests of one device in one batch count each other."""
    async with pool.acquire() as conn, conn.transaction():
        devices = {
            r["id"]: r for r in await conn.fetch(LOCK_DEVICES, sorted({q.device_id for q in requests}))
        }
        accounts = sorted({d["account_id"] for d in devices.values()})
        cas = {r["account_id"]: bytes(r["certificate"]) for r in await conn.fetch(SELECT_CAS, accounts)}
        held = {r["id"]: list(r["held"]) for r in await conn.fetch(SELECT_UNEXPIRED, list(devices))}
        outcomes: list[Recorded | Exception] = []
        signed: list[tuple[str, DeviceCertificate]] = []
        for request in requests:
            device = devices.get(request.device_id)
            if (
                device is None
                or device["disabled"]
                or device["credential_generation"] != request.credential_generation
                or device["hardware_id"] != request.hardware_id
            ):
                outcomes.append(None)
                continue
            if cas.get(device["account_id"]) != request.ca_der:
                outcomes.append(StaleCa())
                continue
            unexpired = held[request.device_id]
            if len(unexpired) >= limit:
                outcomes.append(AtCertificateLimit(len(unexpired), unexpired[len(unexpired) - limit]))
                continue
            try:
                issued = request.sign()
            except Exception as exc:  # this request's own fault (its CSR): the batch goes on
                outcomes.append(exc)
                continue
            unexpired.append(issued.not_after)
            unexpired.sort()
            signed.append((request.device_id, issued))
            outcomes.append(issued)
        if signed:
            await conn.execute(
                INSERT_CERTIFICATES,
                [device_id for device_id, _ in signed],
                [c.serial for _, c in signed],
                [c.public_key_sha256 for _, c in signed],
                [c.der for _, c in signed],
                [c.not_after for _, c in signed],
            )
        return outcomes


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
    certificate: IssuedCertificate  # the newest current one of the key


async def holder_of_key(pool: Pool, account_id: str, key_sha256: bytes) -> KeyHolder | None:
    """The enabled device of the account whose unrevoked, unexpired certificate holds the
    key of SHA-256 ``key_sha256`` (SubjectPublicKeyInfo DER), or None."""
    row = await pool.fetchrow(SELECT_BY_KEY, account_id, key_sha256)
    if row is None:
        return None
    held = IssuedCertificate(row["serial"], row["certificate"], row["not_after"], row["issued_at"], None)
    return KeyHolder(
        row["device_id"], row["registration_id"], row["hardware_id"], row["credential_generation"], held
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


@dataclass(frozen=True)
class PresentedCertificate:
    """A certificate of the account found by its serial, and its device as it is now
    (``registration_id`` None: the device was deleted)."""

    der: bytes
    not_after: datetime
    revoked_at: datetime | None
    device_id: str
    registration_id: str | None
    disabled: bool
    credential_generation: int


async def certificate_by_serial(pool: Pool, account_id: str, serial: str) -> PresentedCertificate | None:
    """The account's certificate of ``serial`` (lower-case hex), or None: what a client
    certificate presented for EST is checked against."""
    row = await pool.fetchrow(SELECT_BY_SERIAL, account_id, serial)
    if row is None:
        return None
    return PresentedCertificate(
        row["certificate"],
        row["not_after"],
        row["revoked_at"],
        row["device_id"],
        row["registration_id"],
        bool(row["disabled"]),
        row["credential_generation"] or 0,
    )


async def issuing_ca_certificates(pool: Pool) -> list[bytes]:
    """Every account's issuing CA certificate (DER): anchors of the https listener's client
    certificates (shared/tls.py), so a device renews over EST with its current certificate."""
    return [r["certificate"] for r in await pool.fetch(SELECT_CA_CERTIFICATES)]
