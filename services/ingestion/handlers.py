"""Bulk registration's business logic: ingest an upload (streamed, checked, all or
nothing), publish it chunk by chunk; a bulk registration's hook, set on the upload or
changed later (shared/hook_settings.py), tested with a sample request and its recent
calls listed (shared/hook_surface.py), as an auto registration's."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import tempfile
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

from services.ingestion.settings import BulkLimits, HookOptions
from shared.db import bulk
from shared.db.hook_calls import HookCall
from shared.db.pool import Pool
from shared.domain.accounts import Account
from shared.domain.bulk_csv import BulkRow, CsvReader, Errors, RowError, shorten
from shared.domain.credentials import Keyring
from shared.domain.hooks import HOOK_FIELDS
from shared.domain.identifiers import is_uuid
from shared.domain.inputs import refuse_unknown_fields
from shared.errors import DomainError, InvalidInput, PayloadTooLarge
from shared.events import BulkPublish, BulkPublished
from shared.hook_settings import HookChange, hook_change, require_hook_role, store_hook_change
from shared.hook_surface import HookCalls, HookTest, recent_calls, sample_call
from shared.settings import Secret

log = logging.getLogger(__name__)

ROWS_PER_BATCH = 5000
# A publish event goes on with chunk after chunk (each its own transaction) for this
# long before it hands over to its continuation event: a Kafka round trip per chunk
# cost more than the chunk, and the handler stays well within the poll interval.
PUBLISH_BUDGET_S = 5.0


SendPublish = Callable[[BulkPublish], Awaitable[None]]


class HookStore(Protocol):
    """What setting a registration hook uses of the service's resources: the registry, the
    key its signing secret is sealed with (FLEETREG_SECRET_KEY) and what a hook may be."""

    @property
    def pool(self) -> Pool: ...

    @property
    def secret_key(self) -> Secret: ...

    @property
    def hooks(self) -> HookOptions: ...


class HookTester(Protocol):
    """What a test call of a registration hook uses of the service's resources: the
    registry, the key that opens the hook's signing secret, and the caller that makes the
    call (shared.hook_caller.HookCaller)."""

    @property
    def pool(self) -> Pool: ...

    @property
    def secret_key(self) -> Secret: ...

    @property
    def hook_caller(self) -> HookCalls: ...


class Store(HookStore, Protocol):
    """What an upload uses of the service's resources (``services.ingestion.resources.Resources``
    is one, opened once per app; a Protocol because the resources sit above the handlers):
    the registry, the keyring that digests the registration keys, the upload limits, and
    what its hook needs."""

    @property
    def keyring(self) -> Keyring: ...

    @property
    def limits(self) -> BulkLimits: ...


@dataclass(frozen=True)
class Upload:
    """An accepted upload: the registration, the warnings of its report, and its hook's
    signing secret when it was given one (shown once, in this answer only)."""

    registration: bulk.BulkRegistration
    warnings: Errors
    hook_secret: str = ""


@dataclass(frozen=True)
class Changed:
    """A bulk registration just changed, with its hook's new signing secret when the change
    set a URL ("": none; shown once, in this answer only)."""

    registration: bulk.BulkRegistration
    hook_secret: str = ""


class UploadRejected(DomainError):
    """A file with any invalid row is rejected whole; the answer lists every bad row."""

    status = 422
    code = "upload_rejected"

    def __init__(self, errors: Errors, status: int = 422) -> None:
        first = errors.shown[0] if errors.shown else None
        where = f" (first: line {first.line}: {first.reason})" if first else ""
        super().__init__(f"the file was rejected: {errors.total} problem(s){where}; nothing was stored")
        self.errors = errors
        self.status = status

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "errors": [e.to_dict() for e in self.errors.shown],
            "errors_total": self.errors.total,
        }


async def spool(chunks: AsyncIterator[bytes], target: IO[bytes], max_bytes: int) -> int:
    """Copy the upload to ``target``; PayloadTooLarge (413) as soon as it passes
    ``max_bytes``: nothing more of the body is read (at most the limit and one chunk), the
    caller answers and closes the connection (services/ingestion/routes.py)."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            log.info(
                "bulk upload refused past the size limit", extra={"bytes_read": size, "max_bytes": max_bytes}
            )
            raise PayloadTooLarge(
                f"the file is larger than the limit of {max_bytes} bytes (FLEETREG_BULK_MAX_BYTES); "
                "the rest of it was not read",
                rule=f"max_bytes={max_bytes}",
            )
        target.write(chunk)
    return size


def _batch(
    rows: Iterator[BulkRow], registration_id: str, keyring: Keyring, size: int
) -> list[bulk.StagedRow]:
    """The next rows as COPY records, keys replaced by their keyed digests (runs in a thread)."""
    digest = keyring.digest_bytes
    return [
        (registration_id, line, hardware_id, digest(key), name, category_a, category_b)
        for line, key, hardware_id, name, category_a, category_b in itertools.islice(rows, size)
    ]


FILE_NAME_MAX = 255


def checked_file_name(value: str) -> str:
    """The upload's file name as shown to operators: at most 255 characters, none of
    them a control, format (bidi override, zero-width) or unassigned character, which
    could disguise the name in a listing; Postgres's text cannot hold NUL either."""
    name = value.strip()
    if len(name) > FILE_NAME_MAX:
        raise InvalidInput(
            f"file_name is {len(name)} characters; the limit is {FILE_NAME_MAX}",
            field="file_name",
            rule=f"max_length={FILE_NAME_MAX}",
        )
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise InvalidInput(
            "file_name may hold only printable characters (no control or bidi-override characters)",
            field="file_name",
            rule="charset=printable",
        )
    return name


# A timeout in a query string: a whole number of milliseconds (more digits are out of range
# whatever they say, and are refused as such by the timeout's own check).
_WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")


def hook_query(query: Mapping[str, str]) -> dict[str, object]:
    """The hook fields of an upload's query string (``hook_url``, ``hook_timeout_ms``,
    ``hook_failure``) as a JSON body has them: a timeout written as a whole number is that
    number; anything else stays text, which the timeout's check refuses."""
    fields: dict[str, object] = {name: query[name] for name in HOOK_FIELDS if name in query}
    timeout = fields.get("hook_timeout_ms")
    if isinstance(timeout, str) and _WHOLE_NUMBER.fullmatch(timeout):
        fields["hook_timeout_ms"] = int(timeout)
    return fields


async def _hook_change(
    r: HookStore,
    account: Account,
    fields: Mapping[str, object],
    registration_id: str,
    *,
    creation: bool = False,
) -> HookChange:
    return await hook_change(
        fields,
        registration_id,
        actor=account,
        secret_key=r.secret_key,
        allow_private=r.hooks.allow_private,
        creation=creation,
    )


async def ingest(
    r: Store,
    account: Account,
    product_id: str,
    file_name: str,
    chunks: AsyncIterator[bytes],
    hook_fields: Mapping[str, object] | None = None,
) -> Upload:
    """Store a valid upload as a bulk registration in state 'configured', with the
    registration hook of ``hook_fields`` (:func:`hook_query`; its signing secret returned
    this once); reject an invalid one whole (UploadRejected, 422, or 413 past the row
    limit), listing every bad row, with nothing of it left in the registry. InvalidInput
    (400) for a bad product ID, file name or hook setting (before a byte of the body is
    read), PayloadTooLarge (413) past FLEETREG_BULK_MAX_BYTES; Forbidden (403) naming the
    field for hook fields from a caller below admin, first."""
    require_hook_role(account, hook_fields or {})
    pool, limits = r.pool, r.limits
    if not is_uuid(product_id):
        raise InvalidInput(
            "product_id must be the ID of a locked product", field="product_id", rule="format=uuid"
        )
    shown_name = checked_file_name(file_name)
    new_id = str(uuid.uuid4())  # its hook's secret is sealed for it
    hook = await _hook_change(r, account, hook_fields or {}, new_id, creation=True)
    registration_id = await bulk.start_upload(
        pool, account.id, product_id, shown_name, registration_id=new_id, hook=hook.hook
    )
    started = time.perf_counter()
    try:
        rows, format_errors, too_many_rows, warnings = await _store_rows(
            pool, r.keyring, registration_id, chunks, limits
        )
        stored = time.perf_counter()
        # The whole-file checks run on every well-formed row even when other rows are
        # bad, so one answer lists every problem of the file.
        problems = (
            await bulk.duplicate_problems(pool, registration_id, account.id, limits.max_reported_errors)
            if rows
            else None
        )
        checked = time.perf_counter()
        if format_errors.total or (problems is not None and problems.total):
            raise UploadRejected(
                _every_problem(format_errors, problems, limits.max_reported_errors),
                status=413 if too_many_rows else 422,
            )
        if rows == 0:
            errors = Errors(1)
            errors.add(RowError(2, "", "", "no data rows: the file has a header only"))
            raise UploadRejected(errors)
        await bulk.finish_upload(pool, registration_id, account, product_id, rows, file_name.strip())
    except BaseException:
        await asyncio.shield(bulk.discard_upload(pool, registration_id))
        raise
    log.info(
        "bulk upload configured",
        extra={
            "registration_id": registration_id,
            "rows": rows,
            "store_s": round(stored - started, 2),
            "check_s": round(checked - stored, 2),
        },
    )
    # The upload report: keys that work but can be guessed (never stored, shown once).
    return Upload(await bulk.get_bulk(pool, account.id, registration_id), warnings, hook.secret)


def _every_problem(format_errors: Errors, problems: bulk.DuplicateProblems | None, limit: int) -> Errors:
    """Format errors and whole-file problems in one list, by line; the total counts all."""
    found = list(format_errors.shown)
    if problems is not None:
        found += [
            RowError(line, column, shorten(value), reason) for line, column, value, reason in problems.shown
        ]
    errors = Errors(limit)
    for error in sorted(found, key=lambda e: e.line):
        errors.add(error)
    errors.total = format_errors.total + (problems.total if problems is not None else 0)
    return errors


async def _store_rows(
    pool: Pool, keyring: Keyring, registration_id: str, chunks: AsyncIterator[bytes], limits: BulkLimits
) -> tuple[int, Errors, bool, Errors]:
    """Spool, read and store every well-formed row (also when other rows are bad, for the
    whole-file checks); (rows stored, format errors, whether the row limit was crossed)."""
    with tempfile.TemporaryFile(dir=limits.spool_dir) as spooled:
        await spool(chunks, spooled, limits.max_bytes)
        spooled.seek(0)
        reader = CsvReader(spooled, max_rows=limits.max_rows, max_errors=limits.max_reported_errors)
        rows = iter(reader)
        stored = 0
        # The next batch is read and checked in a worker thread while Postgres copies
        # the last one in: the two run on two cores.
        reading = asyncio.ensure_future(
            asyncio.to_thread(_batch, rows, registration_id, keyring, ROWS_PER_BATCH)
        )
        try:
            while batch := await reading:
                reading = asyncio.ensure_future(
                    asyncio.to_thread(_batch, rows, registration_id, keyring, ROWS_PER_BATCH)
                )
                await bulk.copy_rows(pool, batch)
                stored += len(batch)
        finally:
            # The thread reads the spool file: let it finish before the file closes.
            await asyncio.shield(asyncio.wait([reading]))
            if not reading.cancelled():
                reading.exception()  # retrieved: the error that counts is the one raised above
    return stored, reader.errors, reader.too_many_rows, reader.warnings


async def list_registrations(pool: Pool, account: Account) -> list[bulk.BulkRegistration]:
    return await bulk.list_bulk(pool, account.id)


async def registration(pool: Pool, account: Account, registration_id: str) -> bulk.BulkRegistration:
    """One of the account's bulk registrations with its conflict rows; NotFound otherwise."""
    return await bulk.get_bulk(pool, account.id, registration_id)


async def update_registration(
    r: HookStore, account: Account, registration_id: str, body: Mapping[str, Any]
) -> Changed:
    """Change a bulk registration's hook, in any state (its devices claim once it is
    published): ``hook_url`` (null removes the hook and its secret; a URL gets a new
    signing secret, returned this once), ``hook_timeout_ms``, ``hook_failure`` (alone they
    keep the URL and secret). InvalidInput for another field, for none, or for a bad
    setting (naming the field); NotFound outside the account."""
    refuse_unknown_fields(body, HOOK_FIELDS, what="a bulk registration's change")
    if not body:
        raise InvalidInput(
            "a hook setting is required: " + ", ".join(HOOK_FIELDS), field="hook_url", rule="required"
        )
    hook = await _hook_change(r, account, body, registration_id)
    await store_hook_change(r.pool, account, "bulk", registration_id, hook)
    return Changed(await bulk.get_bulk(r.pool, account.id, registration_id), hook.secret)


async def try_hook(r: HookTester, account: Account, registration_id: str, body: dict[str, Any]) -> HookTest:
    """Call the bulk registration's hook once with a sample request (``body``: optional
    ``hardware_id``): ``decision`` ``claim``, as a device's claim of its row is asked
    about (shared.hook_surface.sample_call; audited as ``bulk.hook_tested``). NotFound
    outside the account; Conflict without a hook."""
    return await sample_call(
        r.pool, account, registration_id, body, secret_key=r.secret_key, caller=r.hook_caller, kind="bulk"
    )


async def hook_calls(
    pool: Pool, account: Account, registration_id: str, query: dict[str, str]
) -> list[HookCall]:
    """The bulk registration's recent hook calls, newest first (``query``: ``limit``,
    1-500, 50 by default). NotFound outside the account."""
    return await recent_calls(pool, account, registration_id, query, kind="bulk")


async def request_publish(
    pool: Pool, send: SendPublish, account: Account, registration_id: str
) -> bulk.BulkRegistration:
    """configured -> publishing, then send the first chunk's event (publishing again
    resumes: the chunks are idempotent); Conflict (409) in any other state."""
    await bulk.start_publish(pool, account, registration_id)
    await send(BulkPublish(registration_id=registration_id, after_line=0))
    return await bulk.get_bulk(pool, account.id, registration_id)


async def cancel(pool: Pool, account: Account, registration_id: str) -> bulk.BulkRegistration:
    """Cancel a configured bulk registration (its staged rows are dropped); the
    registration as it was. NotFound, or Conflict (409) once publishing has started."""
    return await bulk.cancel_bulk(pool, account, registration_id)


async def discard_abandoned_uploads(pool: Pool, stale_after_s: float) -> None:
    """At start: uploads left 'uploading' by a crashed instance are deleted with their rows."""
    discarded = await bulk.discard_stale_uploads(pool, stale_after_s)
    if discarded:
        log.warning("discarded uploads abandoned by a crash", extra={"count": discarded})


async def publish_chunks(
    pool: Pool, events: Sequence[BulkPublish], chunk_rows: int, budget_s: float = PUBLISH_BUDGET_S
) -> list[BulkPublish | BulkPublished]:
    """Publish chunks for each event, one transaction each, for up to ``budget_s`` per
    event; return the events to send next: for a registration not finished, the event of
    the chunk that follows; for one finished (now, or before: a redelivered event after a
    crash), its BulkPublished announcement. A chunk's progress is in the registry (its rows
    are gone from the pending ones), so a redelivered event after a crash resumes where the
    last committed chunk ended."""
    following: list[BulkPublish | BulkPublished] = []
    for event in events:
        after_line = event.after_line
        deadline = time.monotonic() + budget_s
        while True:
            result = await bulk.publish_chunk(pool, event.registration_id, after_line, chunk_rows)
            if result is None or result.finished:
                if result is not None:
                    log.info(
                        "bulk registration preregistered", extra={"registration_id": event.registration_id}
                    )
                done = await bulk.published_bulk(pool, event.registration_id)
                if done is not None:
                    following.append(
                        BulkPublished(
                            registration_id=done.registration_id,
                            account_id=done.account_id,
                            product_id=done.product_id,
                            published=done.published,
                            conflicts=done.conflicts,
                            at=time.time(),
                        )
                    )
                break
            if not (result.published or result.conflicts):
                break
            after_line = result.last_line
            if time.monotonic() >= deadline:
                following.append(BulkPublish(registration_id=event.registration_id, after_line=after_line))
                break
    return following
