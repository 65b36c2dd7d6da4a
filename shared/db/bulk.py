"""Bulk registrations: uploaded rows, the checks that need the whole file, publishing.

An upload streams its rows into ``bulk_rows`` under a registration in the internal
state ``uploading``; the checks that need every row (duplicates in the file, in
the account, in other pending uploads) run in SQL; a rejected upload is deleted
with its rows, so the registry is as it was. Publishing turns pending rows into
preregistered devices chunk by chunk, each chunk one transaction, resumable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from asyncpg import ForeignKeyViolationError, Record, UniqueViolationError

from shared.db import audit, products
from shared.db.pool import Pool
from shared.db.registrations import Hook, hook_audit
from shared.domain.accounts import Account
from shared.domain.identifiers import is_uuid
from shared.domain.products import registration_kind_refusal
from shared.errors import Conflict, NotFound

BULK = "bulk"
ROW_COLUMNS = (
    "registration_id",
    "line",
    "hardware_id",
    "registration_key_digest",
    "name",
    "category_a",
    "category_b",
)

INSERT_UPLOAD = """INSERT INTO registrations (id, account_id, product_id, kind, status, file_name,
                                              hook_url, hook_timeout_ms, hook_failure, hook_secret_sealed)
                   VALUES ($1, $2, $3, 'bulk', 'uploading', $4, $5, $6, $7, $8)"""
# Each check answers the first rows at fault by line, at most the report's limit, each
# row with the total: a file of 2,000,000 rows repeating 1,820 keys and IDs has ~4,000,000
# problems, and answering whole groups (every line of the first 1,000 repeated IDs, as
# these did before) took the ingestion service from 53 to 611 MB for one rejection. The
# groups stay in Postgres (hashed there, spilled to disk past work_mem); an empty group
# list ends the query before bulk_rows is read again, so a valid file pays one aggregate.
DUPLICATES_IN_FILE = """
    WITH repeated AS MATERIALIZED (
        SELECT lower(hardware_id) AS id, min(line) AS first, count(*) - 1 AS later
        FROM bulk_rows WHERE registration_id = $1
        GROUP BY lower(hardware_id) HAVING count(*) > 1)
    , at_fault AS MATERIALIZED (
        SELECT b.line, b.hardware_id, r.first FROM repeated r
        JOIN bulk_rows b ON b.registration_id = $1 AND lower(b.hardware_id) = r.id AND b.line > r.first)
    SELECT line, hardware_id, first, (SELECT sum(later) FROM repeated) AS total
    FROM at_fault ORDER BY line LIMIT $2"""
# One key on several rows: every device of a CSV needs its own key (one key for a
# whole batch lets anyone who learns it claim any listed hardware ID).
REPEATED_KEYS = """
    WITH repeated AS MATERIALIZED (
        SELECT registration_key_digest AS digest, min(line) AS first, count(*) - 1 AS later
        FROM bulk_rows WHERE registration_id = $1
        GROUP BY registration_key_digest HAVING count(*) > 1)
    , at_fault AS MATERIALIZED (
        SELECT b.line, r.first FROM repeated r
        JOIN bulk_rows b ON b.registration_id = $1 AND b.registration_key_digest = r.digest
                        AND b.line > r.first)
    SELECT line, first, (SELECT sum(later) FROM repeated) AS total
    FROM at_fault ORDER BY line LIMIT $2"""
TAKEN_IN_ACCOUNT = """
    SELECT b.line, b.hardware_id, count(*) OVER () AS total FROM bulk_rows b
    JOIN devices d ON d.account_id = $2 AND lower(d.hardware_id) = lower(b.hardware_id)
    WHERE b.registration_id = $1 ORDER BY b.line LIMIT $3"""
LISTED_ELSEWHERE = """
    SELECT b.line, b.hardware_id, r.id::text AS other, count(*) OVER () AS total FROM bulk_rows b
    JOIN bulk_rows o ON lower(o.hardware_id) = lower(b.hardware_id) AND o.registration_id <> b.registration_id
                    AND o.state = 'pending'
    JOIN registrations r ON r.id = o.registration_id AND r.account_id = $2
                        AND r.status IN ('configured', 'publishing')
    WHERE b.registration_id = $1 ORDER BY b.line LIMIT $3"""
CLAIM_PRODUCT = """UPDATE products SET registration_kind = 'bulk'
    WHERE id = $1 AND account_id = $2 AND status = 'locked'
      AND (registration_kind IS NULL OR registration_kind = 'bulk') RETURNING id"""
FINISH_UPLOAD = """UPDATE registrations SET status = 'configured', row_count = $2, updated_at = now()
                   WHERE id = $1 AND status = 'uploading'
                   RETURNING hook_url, hook_timeout_ms, hook_failure"""
DISCARD_UPLOAD = "DELETE FROM registrations WHERE id = $1 AND status = 'uploading'"
DISCARD_STALE = """DELETE FROM registrations WHERE kind = 'bulk' AND status = 'uploading'
                   AND created_at < now() - make_interval(secs => $1) RETURNING id"""
SELECT_BULK = """
    SELECT r.id::text, r.product_id::text, r.account_id::text, r.status, r.row_count, r.published_count,
           r.conflict_count, r.file_name, r.created_at, r.updated_at,
           r.hook_url, r.hook_timeout_ms, r.hook_failure
    FROM registrations r
    WHERE r.account_id = $1 AND r.kind = 'bulk' AND r.status <> 'uploading'
      AND ($2::uuid IS NULL OR r.id = $2)
    ORDER BY r.created_at, r.id"""
SELECT_CONFLICTS = """SELECT line, hardware_id FROM bulk_rows
                      WHERE registration_id = $1 AND state = 'conflict' ORDER BY line LIMIT $2"""
SELECT_FOR_CHANGE = """SELECT status, product_id::text, row_count, file_name FROM registrations
                       WHERE id = $1 AND account_id = $2 AND kind = 'bulk' AND status <> 'uploading'
                       FOR UPDATE"""
START_PUBLISH = """UPDATE registrations SET status = 'publishing', updated_at = now()
                   WHERE id = $1 AND account_id = $2 AND kind = 'bulk'
                     AND status IN ('configured', 'publishing')
                   RETURNING id"""
# Cancelling drops the registration with its staged rows (ON DELETE CASCADE); the audit
# trail keeps what it was. The product no longer serves bulk registrations once none is
# left (uploads still being checked included), so it may serve an auto registration.
DELETE_REGISTRATION = "DELETE FROM registrations WHERE id = $1 AND status = 'configured'"
RELEASE_PRODUCT_KIND = """UPDATE products SET registration_kind = NULL
    WHERE id = $1 AND registration_kind = 'bulk'
      AND NOT EXISTS (SELECT 1 FROM registrations WHERE product_id = $1)"""
SELECT_PUBLISH_TARGET = """SELECT account_id::text, product_id::text, status FROM registrations
                           WHERE id = $1 AND kind = 'bulk'"""
# Publishing one chunk: insert the devices of the next pending rows straight from
# bulk_rows (the rows never travel to the service and back); the chunk's rows need
# no row locks, as every chunk first locks its registration. Rows whose hardware ID
# was taken meanwhile (rare) are found by index and marked as conflicts, then the
# chunk's range of pending rows, now exactly the published ones, is deleted. The
# insert is tried plain first: ON CONFLICT's speculative insertion costs a fifth more
# per row, and a taken hardware ID is rare (it fails the plain insert, which is then
# undone to its savepoint and done again skipping the taken IDs).
_INSERT_CHUNK = """
    WITH chunk AS (
        SELECT line, hardware_id, registration_key_digest, name, category_a, category_b
        FROM bulk_rows WHERE registration_id = $1 AND state = 'pending' AND line > $2
        ORDER BY line LIMIT $3),
    inserted AS (
        INSERT INTO devices (id, account_id, product_id, registration_id, hardware_id,
                             claimed_hardware_id, name, category_a, category_b, lifecycle,
                             registration_key_digest)
        SELECT gen_random_uuid(), $4, $5, $1, hardware_id, hardware_id, name, category_a, category_b,
               'preregistered', registration_key_digest
        FROM chunk ORDER BY line
        {on_conflict}
        RETURNING 1)
    SELECT (SELECT count(*) FROM chunk) AS chunk_rows, (SELECT max(line) FROM chunk) AS last_line,
           (SELECT count(*) FROM inserted) AS published"""
INSERT_CHUNK = _INSERT_CHUNK.format(on_conflict="")
INSERT_CHUNK_SKIPPING_TAKEN = _INSERT_CHUNK.format(
    on_conflict="ON CONFLICT (account_id, lower(hardware_id)) DO NOTHING"
)
# The chunk's rows without a device of this registration: taken in the account since.
CHUNK_CONFLICTS = """
    SELECT b.line FROM bulk_rows b
    WHERE b.registration_id = $1 AND b.state = 'pending' AND b.line > $2 AND b.line <= $3
      AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.account_id = $4
                      AND lower(d.hardware_id) = lower(b.hardware_id) AND d.registration_id = $1)
    ORDER BY b.line"""
DELETE_PUBLISHED = """DELETE FROM bulk_rows
    WHERE registration_id = $1 AND state = 'pending' AND line > $2 AND line <= $3"""
MARK_CONFLICTS = (
    "UPDATE bulk_rows SET state = 'conflict' WHERE registration_id = $1 AND line = ANY($2::int[])"
)
ADD_COUNTS = """UPDATE registrations SET published_count = published_count + $2,
                       conflict_count = conflict_count + $3, updated_at = now() WHERE id = $1"""
SELECT_PUBLISHED = """SELECT account_id::text, product_id::text, published_count, conflict_count
                      FROM registrations WHERE id = $1 AND kind = 'bulk' AND status = 'preregistered'"""
FINISH_PUBLISH = """UPDATE registrations SET status = 'preregistered', updated_at = now()
                    WHERE id = $1 AND status = 'publishing'
                      AND NOT EXISTS (SELECT 1 FROM bulk_rows
                                      WHERE registration_id = $1 AND state = 'pending')
                    RETURNING id"""


# One uploaded row as COPY writes it, in ROW_COLUMNS order: (registration ID, line,
# hardware ID, the registration key's keyed digest, name, category A, category B).
StagedRow = tuple[str, int, str, bytes, str, str, str]


@dataclass(frozen=True)
class ConflictRow:
    """A row whose hardware ID was registered in the account between upload and publish."""

    line: int
    hardware_id: str


@dataclass(frozen=True)
class BulkRegistration:
    """An upload that passed its checks: its state and counts (``conflict_rows`` only
    when asked for one registration, the first ``conflicts_shown`` of them)."""

    id: str
    product_id: str
    status: str  # configured, publishing, preregistered
    rows: int
    published: int
    conflicts: int
    file_name: str
    created_at: datetime
    updated_at: datetime
    conflict_rows: tuple[ConflictRow, ...] = ()
    # Its registration hook (docs/registration-hook.md), as an auto registration's: the URL
    # (None: no hook), the call's timeout in milliseconds, what a failed call does.
    hook_url: str | None = None
    hook_timeout_ms: int = 2000
    hook_failure: str = "closed"


@dataclass(frozen=True)
class PublishedBulk:
    """A bulk registration whose publishing finished: its devices and conflicts."""

    registration_id: str
    account_id: str
    product_id: str
    published: int
    conflicts: int


@dataclass(frozen=True)
class ChunkResult:
    published: int
    conflicts: int
    last_line: int
    finished: bool


async def start_upload(
    pool: Pool,
    account_id: str,
    product_id: str,
    file_name: str,
    *,
    registration_id: str | None = None,
    hook: Hook | None = None,
) -> str:
    """A registration in the internal state 'uploading', after checking the product:
    ``registration_id`` (the ID its hook's secret was sealed for; a new one by default)
    with its registration ``hook``, if any."""
    async with pool.acquire() as conn:
        state = await products.product_state(conn, account_id, product_id)
    if state is None:
        raise NotFound(f"no product {product_id} in this account", field="product_id")
    refusal = registration_kind_refusal(product_id, state.status, state.registration_kind, BULK)
    if refusal is not None:
        raise refusal
    registration_id = registration_id or str(uuid.uuid4())
    try:
        await pool.execute(
            INSERT_UPLOAD,
            registration_id,
            account_id,
            product_id,
            file_name[:200],
            hook.url if hook else None,
            hook.timeout_ms if hook else 2000,
            hook.failure if hook else "closed",
            hook.secret_sealed if hook else None,
        )
    except ForeignKeyViolationError as exc:  # the product was deleted since it was read
        raise NotFound(f"no product {product_id} in this account", field="product_id") from exc
    return registration_id


async def copy_rows(pool: Pool, rows: Sequence[StagedRow]) -> None:
    """Append rows (in ROW_COLUMNS order) with COPY: one round trip for the whole batch."""
    async with pool.acquire() as conn:
        await conn.copy_records_to_table("bulk_rows", records=rows, columns=ROW_COLUMNS)


@dataclass(frozen=True)
class DuplicateProblems:
    """The first problems (line, column, value shown, reason), and how many in all."""

    shown: list[tuple[int, str, str, str]]
    total: int


async def duplicate_problems(
    pool: Pool, registration_id: str, account_id: str, limit: int, timeout_s: float = 600
) -> DuplicateProblems:
    """Rows whose hardware ID is listed twice in the file, registered in the account
    already, or listed by another upload not yet published, and rows repeating another
    row's registration key (keys are stored as digests: the value is not shown): the
    first ``limit`` problems by line and the exact total. Each check answers at most
    ``limit`` rows, whatever the number of problems (see DUPLICATES_IN_FILE)."""
    # Fresh statistics for the rows just copied in, so the checks get index-driven plans.
    await pool.execute("ANALYZE bulk_rows", timeout=timeout_s)
    # The four checks are independent: run at once, on connections of their own, they
    # use every core the database has.
    in_file, repeated_keys, taken, listed = await asyncio.gather(
        pool.fetch(DUPLICATES_IN_FILE, registration_id, limit, timeout=timeout_s),
        pool.fetch(REPEATED_KEYS, registration_id, limit, timeout=timeout_s),
        pool.fetch(TAKEN_IN_ACCOUNT, registration_id, account_id, limit, timeout=timeout_s),
        pool.fetch(LISTED_ELSEWHERE, registration_id, account_id, limit, timeout=timeout_s),
    )
    shown: list[tuple[int, str, str, str]] = [
        (r["line"], "HARDWARE_ID", r["hardware_id"], f"duplicate hardware ID: also on line {r['first']}")
        for r in in_file
    ]
    shown.extend(
        (
            r["line"],
            "REGISTRATION_KEY",
            "",
            f"the registration key of line {r['first']} again: every device needs a key of its own",
        )
        for r in repeated_keys
    )
    shown.extend(
        (r["line"], "HARDWARE_ID", r["hardware_id"], "hardware ID already registered in this account")
        for r in taken
    )
    shown.extend(
        (
            r["line"],
            "HARDWARE_ID",
            r["hardware_id"],
            f"hardware ID already listed by bulk registration {r['other']}",
        )
        for r in listed
    )
    total = sum(int(rows[0]["total"]) if rows else 0 for rows in (in_file, repeated_keys, taken, listed))
    shown.sort()
    return DuplicateProblems(shown[:limit], total)


async def finish_upload(
    pool: Pool, registration_id: str, actor: Account, product_id: str, rows: int, file_name: str = ""
) -> None:
    """uploading -> configured, the product claimed for bulk registrations; audited as
    ``bulk.uploaded`` (the product, file name and row count, and a hook's host, timeout and
    policy with ``"hook_secret": "issued"``, never the secret)."""
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(CLAIM_PRODUCT, product_id, actor.id) is None:
            # An auto registration took the product while the file was checked.
            state = await products.product_state(conn, actor.id, product_id)
            refusal = state and registration_kind_refusal(
                product_id, state.status, state.registration_kind, BULK
            )
            raise refusal or Conflict(f"product {product_id} cannot take a bulk registration now")
        hook = await conn.fetchrow(FINISH_UPLOAD, registration_id, rows)
        await audit.record(
            conn,
            actor,
            "bulk.uploaded",
            "bulk_registration",
            registration_id,
            {"product_id": product_id, "file_name": file_name, "rows": rows, "status": "configured"}
            | (
                hook_audit(hook["hook_url"], hook["hook_timeout_ms"], hook["hook_failure"])
                | {"hook_secret": "issued"}
                if hook is not None and hook["hook_url"] is not None
                else {}
            ),
        )


async def discard_upload(pool: Pool, registration_id: str) -> None:
    await pool.execute(DISCARD_UPLOAD, registration_id)


async def discard_stale_uploads(pool: Pool, older_than_s: float) -> int:
    """Uploads left 'uploading' by a crashed instance: delete them and their rows."""
    return len(await pool.fetch(DISCARD_STALE, older_than_s))


def _registration(row: Record) -> BulkRegistration:
    return BulkRegistration(
        id=row["id"],
        product_id=row["product_id"],
        status=row["status"],
        rows=row["row_count"],
        published=row["published_count"],
        conflicts=row["conflict_count"],
        file_name=row["file_name"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        hook_url=row["hook_url"],
        hook_timeout_ms=row["hook_timeout_ms"],
        hook_failure=row["hook_failure"],
    )


async def list_bulk(
    pool: Pool, account_id: str, registration_id: str | None = None
) -> list[BulkRegistration]:
    """The account's bulk registrations (not those still uploading), oldest first."""
    return [_registration(r) for r in await pool.fetch(SELECT_BULK, account_id, registration_id)]


async def get_bulk(
    pool: Pool, account_id: str, registration_id: str, conflicts_shown: int = 1000
) -> BulkRegistration:
    """One bulk registration with its first ``conflicts_shown`` conflict rows; NotFound
    when the account has no such registration."""
    found = await list_bulk(pool, account_id, registration_id)
    if not found:
        raise NotFound(f"no bulk registration {registration_id} in this account")
    conflicts = await pool.fetch(SELECT_CONFLICTS, registration_id, conflicts_shown)
    return dataclasses.replace(
        found[0], conflict_rows=tuple(ConflictRow(r["line"], r["hardware_id"]) for r in conflicts)
    )


async def start_publish(pool: Pool, actor: Account, registration_id: str) -> None:
    """configured -> publishing; publishing again resumes (the chunks are idempotent).
    Audited as ``bulk.publish_requested`` (each request, a resumption included).
    NotFound (no such registration in the account), Conflict once it is preregistered."""
    async with pool.acquire() as conn, conn.transaction():
        before = await conn.fetchrow(SELECT_FOR_CHANGE, registration_id, actor.id)
        if before is None:
            raise NotFound(f"no bulk registration {registration_id} in this account")
        if await conn.fetchval(START_PUBLISH, registration_id, actor.id) is None:
            raise Conflict(
                f"bulk registration {registration_id} is {before['status']}: nothing to publish",
                rule="state=configured",
            )
        await audit.record(
            conn,
            actor,
            "bulk.publish_requested",
            "bulk_registration",
            registration_id,
            {"status": {"from": before["status"], "to": "publishing"}},
        )


async def cancel_bulk(pool: Pool, actor: Account, registration_id: str) -> BulkRegistration:
    """Cancel a configured (uploaded, not yet published) bulk registration: it and its
    staged rows are deleted, and its product, when no other registration uses it, may
    serve an auto registration again. Audited as ``bulk.cancelled`` (product, file
    name, rows). The registration as it was is returned.

    NotFound (no such registration in the account); Conflict (409) once publishing has
    started (its devices exist or are being created: delete them instead). The
    registration's row is locked first, as publishing locks it: a publish request at the
    same moment either comes first (and the cancel is refused) or finds nothing."""
    async with pool.acquire() as conn, conn.transaction():
        before = await conn.fetchrow(SELECT_FOR_CHANGE, registration_id, actor.id)
        if before is None:
            raise NotFound(f"no bulk registration {registration_id} in this account")
        if before["status"] != "configured":
            raise Conflict(
                f"bulk registration {registration_id} is {before['status']}: only a configured "
                "registration (not yet published) can be cancelled; delete its devices instead",
                rule="state=configured",
            )
        row = await conn.fetchrow(SELECT_BULK, actor.id, registration_id)
        if row is None:  # locked above: it cannot have gone
            raise NotFound(f"no bulk registration {registration_id} in this account")
        found = _registration(row)
        await conn.execute(DELETE_REGISTRATION, registration_id)
        await conn.execute(RELEASE_PRODUCT_KIND, uuid.UUID(before["product_id"]))
        await audit.record(
            conn,
            actor,
            "bulk.cancelled",
            "bulk_registration",
            registration_id,
            {
                "product_id": before["product_id"],
                "file_name": before["file_name"],
                "rows": before["row_count"],
                "status": {"from": "configured", "to": "cancelled"},
            },
        )
    return found


async def publish_chunk(pool: Pool, registration_id: str, after_line: int, size: int) -> ChunkResult | None:
    """Publish the next ``size`` pending rows after ``after_line`` in one transaction;
    None when the registration is not (or no longer) publishing."""
    async with pool.acquire() as conn, conn.transaction():
        target = await conn.fetchrow(SELECT_PUBLISH_TARGET + " FOR UPDATE", registration_id)
        if target is None or target["status"] != "publishing":
            return None
        arguments = (registration_id, after_line, size, target["account_id"], target["product_id"])
        try:
            async with conn.transaction():  # a savepoint
                chunk = await conn.fetchrow(INSERT_CHUNK, *arguments)
        except UniqueViolationError:
            chunk = await conn.fetchrow(INSERT_CHUNK_SKIPPING_TAKEN, *arguments)
        assert chunk is not None  # an aggregate: always one row
        rows, published = chunk["chunk_rows"], chunk["published"]
        last_line = chunk["last_line"] if rows else after_line
        conflicts: list[int] = []
        if published < rows:
            conflicts = [
                r["line"]
                for r in await conn.fetch(
                    CHUNK_CONFLICTS, registration_id, after_line, last_line, target["account_id"]
                )
            ]
            await conn.execute(MARK_CONFLICTS, registration_id, conflicts)
        if rows:
            await conn.execute(DELETE_PUBLISHED, registration_id, after_line, last_line)
            await conn.execute(ADD_COUNTS, registration_id, published, len(conflicts))
        finished = False
        if rows < size:
            finished = await conn.fetchval(FINISH_PUBLISH, registration_id) is not None
        return ChunkResult(published, len(conflicts), last_line, finished)


async def published_bulk(pool: Pool, registration_id: str) -> PublishedBulk | None:
    """The registration if its publishing finished (status preregistered), else None."""
    row = await pool.fetchrow(SELECT_PUBLISHED, registration_id) if is_uuid(registration_id) else None
    if row is None:
        return None
    return PublishedBulk(
        registration_id=registration_id,
        account_id=row["account_id"],
        product_id=row["product_id"],
        published=row["published_count"],
        conflicts=row["conflict_count"],
    )


# What a bulk claim from an address over its refusal limit is checked against in the
# intake (shared/throttle.py): the code's product (current code, bulk kind) and the device
# of that product with the claimed hardware ID, if any. One indexed read: the code's
# primary key, then devices_account_hardware_id_ci. A device of another product with the
# hardware ID is none of this code's (a claim stays in its product).
SELECT_CLAIM_EVIDENCE = """
    SELECT p.registration_kind = 'bulk' AND c.revoked_at IS NULL AS bulk,
           c.revoked_at IS NOT NULL AS revoked,
           p.registration_kind = 'auto' AND c.revoked_at IS NULL AS auto,
           d.id::text AS device_id, d.credential_generation,
           coalesce(encode(d.registration_key_digest, 'hex'), '') AS registration_key_digest
    FROM bulk_identification_codes c
    JOIN products p ON p.id = c.product_id
    LEFT JOIN devices d ON d.account_id = p.account_id AND lower(d.hardware_id) = lower($2)
                       AND d.product_id = p.id
    WHERE c.code = $1"""


@dataclass(frozen=True)
class ClaimEvidence:
    """What a bulk claim can prove, as the registry has it: the device of the code's own
    product with the claimed hardware ID (``device_id`` "" when there is none) with its
    current credential generation and its row's registration key digest (keyed, hex: as
    ``RegistrationRequested.registration_key_digest`` carries the presented key; "" when
    the device has none)."""

    device_id: str
    credential_generation: int
    registration_key_digest: str


@dataclass(frozen=True)
class CodeClaim:
    """What the registry says of a claim's code and hardware ID, in one read: whether the
    code is revoked, whether it is the current code of an auto product (``auto``: a kind
    that never changes, so an intake may remember it until the code is rotated), and for a
    current bulk code the claim's :class:`ClaimEvidence` (None otherwise)."""

    revoked: bool
    evidence: ClaimEvidence | None
    auto: bool = False


async def code_claim(pool: Pool, code: str, hardware_id: str) -> CodeClaim | None:
    """What a claim presenting ``code`` (canonical form) and ``hardware_id`` (any case) is
    checked against, in one registry read, the same whether or not the hardware ID is
    listed: whether the code is revoked or an auto product's, and for a current bulk code
    the claim's :class:`ClaimEvidence`. None for a code the registry does not know."""
    row = await pool.fetchrow(SELECT_CLAIM_EVIDENCE, code, hardware_id)
    if row is None:
        return None
    return CodeClaim(bool(row["revoked"]), _evidence(row) if row["bulk"] else None, bool(row["auto"]))


def _evidence(row: Record) -> ClaimEvidence:
    return ClaimEvidence(
        device_id=row["device_id"] or "",
        credential_generation=row["credential_generation"] or 0,
        registration_key_digest=row["registration_key_digest"],
    )
