"""What the reference-compatible device API (apv/v27) reads and writes.

Its calls name a provisioning ID (a product service's ID, or the Bulk
Identification Code standing for the product's bulk service) and a hardware ID,
never a device ID; these statements resolve them.
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass

from asyncpg import ForeignKeyViolationError

from shared.db.pool import Pool

# One statement: a record of (code, hardware ID, source) already there is overwritten
# (never capped: a device reboots from the same address); a new one is inserted only
# while the source created fewer than $7 records in the last minute (migration 0017's
# index on (source, created_at); the count stops at $7). Both only for a current code.
# Concurrent first reports of one record meet in ON CONFLICT and overwrite.
UPSERT_INFORMATION = """
    WITH code AS (
        SELECT 1 FROM bulk_identification_codes WHERE code = $1 AND revoked_at IS NULL
    ), updated AS (
        UPDATE device_information
           SET fingerprint = $3, secret_digest = $4, os_label = $5, updated_at = now()
         WHERE bulk_identification_code = $1 AND hardware_id = $2 AND source = $6
           AND EXISTS (SELECT 1 FROM code)
        RETURNING 1
    ), inserted AS (
        INSERT INTO device_information
            (bulk_identification_code, hardware_id, fingerprint, secret_digest, os_label, source)
        SELECT $1, $2, $3, $4, $5, $6
        WHERE EXISTS (SELECT 1 FROM code) AND NOT EXISTS (SELECT 1 FROM updated)
          AND (SELECT count(*) FROM (SELECT 1 FROM device_information
                                     WHERE source = $6 AND created_at > now() - interval '1 minute'
                                     LIMIT $7) AS recent) < $7
        ON CONFLICT (bulk_identification_code, hardware_id, source) DO UPDATE
           SET fingerprint = excluded.fingerprint, secret_digest = excluded.secret_digest,
               os_label = excluded.os_label, updated_at = now()
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM code) AS known,
           EXISTS (SELECT 1 FROM updated) OR EXISTS (SELECT 1 FROM inserted) AS stored"""
# Whether a source created at least $2 records in the last minute (counting stops there).
SELECT_NEW_RECORDS_CAPPED = """
    SELECT count(*) >= $2 FROM (SELECT 1 FROM device_information
                                WHERE source = $1 AND created_at > now() - interval '1 minute'
                                LIMIT $2) AS recent"""
FORGET_INFORMATION = """
    DELETE FROM device_information WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM device_information
        WHERE updated_at < now() - make_interval(secs => $1) LIMIT $2))"""
SELECT_INFORMATION = """SELECT fingerprint, secret_digest FROM device_information
                        WHERE bulk_identification_code = $1 AND hardware_id = $2 AND source = $3"""
SELECT_CODE_SERVICES = """
    SELECT s.id::text AS provisioning_id, s.is_bulk_service, s.type_code, s.port, s.enabled
    FROM bulk_identification_codes c JOIN product_services s ON s.product_id = c.product_id
    WHERE c.code = $1 ORDER BY s.position"""
# A provisioning ID is a service ID, or a (current) code standing for the bulk service.
SELECT_SERVICE = """
    SELECT s.id::text AS service_id, s.is_bulk_service, s.type_code, s.port, s.enabled,
           p.id::text AS product_id, p.account_id::text AS account_id, p.registration_kind,
           -- the configuration's timestamp: the lock, or the service's last change since
           extract(epoch FROM greatest(p.locked_at, s.changed_at))::bigint AS changed_epoch,
           (SELECT code FROM bulk_identification_codes
             WHERE product_id = p.id AND revoked_at IS NULL) AS code
    FROM product_services s JOIN products p ON p.id = s.product_id
    WHERE p.status = 'locked' AND (
        s.id = $1
        OR (s.is_bulk_service AND s.product_id = (
            SELECT product_id FROM bulk_identification_codes
             WHERE code = $2 AND revoked_at IS NULL)))"""
# What a provisioning ID can be: a service ID or a code, in UUID form, either case. It
# is checked before any query, so no caller's text reaches a cast or the server at
# all: a failed cast (or a NUL, which text cannot hold) is an error in Postgres's log
# that echoes the value, a code or a key, and a 500.
_PROVISIONING_ID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
SELECT_DEVICE = """
    SELECT v.id::text, v.hardware_id, v.lifecycle, v.disabled, v.fingerprint, v.credential_generation,
           coalesce(encode(v.registration_key_digest, 'hex'), '') AS registration_key_digest,
           f.service_uid,
           EXISTS (SELECT 1 FROM registration_decisions d WHERE d.device_id = v.id AND d.status = 'ready')
               AS provisioned_files,
           -- the latest registration that created or took over the device carried a key
           coalesce((SELECT d.idempotency_key IS NOT NULL FROM registration_decisions d
                     WHERE d.device_id = v.id AND d.decision IN ('new', 'clone')
                     ORDER BY d.decided_at DESC LIMIT 1), false) AS registered_with_key,
           -- who claimed it since it was last registered, while it is not yet confirmed (as
           -- deduplication's family reads it: shared.db.devices.SELECT_FAMILY)
           CASE WHEN v.lifecycle = 'registered' THEN
               array(SELECT DISTINCT d.source FROM registration_decisions d
                     WHERE d.device_id = v.id AND d.decision <> 'refused' AND d.source <> ''
                       AND d.decided_at >= coalesce(v.registered_at, '-infinity'))
           ELSE '{}'::text[] END AS claim_sources
    FROM devices v
    LEFT JOIN provisioning_files f ON f.device_id = v.id AND f.product_service_id = $3
         AND f.generation = v.credential_generation
    -- a claim stays in its product: another product's device with this hardware ID is none
    -- of this service's (its files, secrets and "ready" are its own product's)
    WHERE v.account_id = $1 AND lower(v.hardware_id) = lower($2)
      AND v.product_id = (SELECT product_id FROM product_services WHERE id = $3)"""


@dataclass(frozen=True)
class Service:
    service_id: str
    is_bulk_service: bool
    type_code: int
    port: int
    enabled: bool
    product_id: str
    account_id: str
    registration_kind: str | None
    changed_epoch: int  # the product's lock or the service's last change, in Unix seconds
    code: str | None


class Recorded(enum.Enum):
    """What became of a step-1 report; true only when it was stored."""

    STORED = "stored"
    UNKNOWN_CODE = "unknown_code"  # no current code: nothing stored
    CAPPED = "capped"  # a new hardware ID past the source's cap a minute: nothing stored

    def __bool__(self) -> bool:
        return self is Recorded.STORED


# No cap: the default of record_information (tests, tools); the intake passes its setting.
NO_CAP = 2**31 - 1


@dataclass(frozen=True)
class Reported:
    """What a device reported at step 1 from one address: its fingerprint and the digest
    of the secret it holds (both empty when it reported nothing from there)."""

    fingerprint: str
    secret_digest: str


@dataclass(frozen=True)
class DeviceCredentials:
    """A device as the reference protocol's steps 5 and 6 see it: what proves a caller is
    this device, the state that decides whether its secrets may be handed out
    (:mod:`shared.domain.release`), and its UID for one service."""

    device_id: str
    hardware_id: str
    lifecycle: str
    disabled: bool
    fingerprint: str
    credential_generation: int
    registration_key_digest: str  # hex; empty when it registered without a key
    service_uid: str | None  # None until the service's file is rendered
    provisioned_files: bool  # a registration of the device reached "ready"
    registered_with_key: bool  # the registration that created or took it over had an Idempotency-Key
    # The sources whose claims took it since it was last registered (while not yet confirmed).
    claim_sources: frozenset[str] = frozenset()

    @property
    def files_ready(self) -> bool:
        """Its files are rendered, with a UID for the service asked about."""
        return self.provisioned_files and self.service_uid is not None


async def record_information(
    pool: Pool,
    code: str,
    hardware_id: str,
    fingerprint: str,
    secret_digest: str,
    os_label: str,
    source: str,
    *,
    new_per_minute: int = NO_CAP,
) -> Recorded:
    """Remember what a device reported from ``source`` (its address, as the throttle
    counts it): one record per (code, hardware ID, source), overwritten by each report.

    Returns :attr:`Recorded.STORED`; :attr:`Recorded.UNKNOWN_CODE` when the code is not
    a current code; :attr:`Recorded.CAPPED` when the record would be new and ``source``
    created ``new_per_minute`` records in the last minute already (in every instance:
    the count is the table's; concurrent reports may pass it by the number of calls
    in flight). Nothing is stored unless STORED.

    The OS label is the device's free text: a NUL, which Postgres's text cannot hold
    (the server refuses it with an error, a 500), is dropped."""
    try:
        row = await pool.fetchrow(
            UPSERT_INFORMATION,
            code,
            hardware_id,
            fingerprint,
            secret_digest,
            os_label.replace("\0", ""),
            source,
            new_per_minute,
        )
    except ForeignKeyViolationError:  # the code's product was deleted while this was written
        return Recorded.UNKNOWN_CODE
    if row is None or not row["known"]:
        return Recorded.UNKNOWN_CODE
    return Recorded.STORED if row["stored"] else Recorded.CAPPED


async def new_records_capped(pool: Pool, source: str, new_per_minute: int) -> bool:
    """Whether ``source`` created ``new_per_minute`` step-1 records in the last minute
    (a report of a new hardware ID from it is refused now)."""
    return bool(await pool.fetchval(SELECT_NEW_RECORDS_CAPPED, source, new_per_minute))


async def forget_information(pool: Pool, older_than_s: float, batch: int = 10_000) -> int:
    """Delete step-1 records not written for ``older_than_s`` seconds, ``batch`` at a
    time until none is left; the number deleted. Safe on several instances at once."""
    total = 0
    while True:
        status = await pool.execute(FORGET_INFORMATION, float(older_than_s), batch)
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < batch:
            return total


async def information(pool: Pool, code: str, hardware_id: str, source: str) -> Reported:
    """What the device reported from ``source``, or two empty strings."""
    row = await pool.fetchrow(SELECT_INFORMATION, code, hardware_id, source)
    return Reported(row["fingerprint"], row["secret_digest"]) if row else Reported("", "")


async def provisioning_ids(pool: Pool, code: str) -> list[str]:
    """The provisioning IDs a device of this code downloads: the code itself for the
    bulk service, then each enabled service's ID."""
    rows = await pool.fetch(SELECT_CODE_SERVICES, code)
    return [code if r["is_bulk_service"] else r["provisioning_id"].upper() for r in rows if r["enabled"]]


async def service(pool: Pool, provisioning_id: str) -> Service | None:
    """The service a provisioning ID names, or None; never an error, whatever the text."""
    if not _PROVISIONING_ID.fullmatch(provisioning_id):
        return None
    row = await pool.fetchrow(SELECT_SERVICE, uuid.UUID(provisioning_id), provisioning_id.upper())
    if row is None:
        return None
    return Service(**{k: row[k] for k in Service.__dataclass_fields__})


async def device(pool: Pool, account_id: str, hardware_id: str, service_id: str) -> DeviceCredentials | None:
    """The device with this hardware ID of the product of ``service_id`` (in ``account_id``),
    with its UID for that service, or None (also when another product of the account
    holds the hardware ID)."""
    r = await pool.fetchrow(SELECT_DEVICE, account_id, hardware_id, service_id)
    if r is None:
        return None
    return DeviceCredentials(
        device_id=r["id"],
        hardware_id=r["hardware_id"],
        lifecycle=r["lifecycle"],
        disabled=r["disabled"],
        fingerprint=r["fingerprint"],
        credential_generation=r["credential_generation"],
        registration_key_digest=r["registration_key_digest"],
        service_uid=r["service_uid"],
        provisioned_files=r["provisioned_files"],
        registered_with_key=r["registered_with_key"],
        claim_sources=frozenset(r["claim_sources"]),
    )
