"""Bulk uploads from the console: the upload form's file streamed through to the bulk API
chunk by chunk (never held whole in memory; the CSRF token and a read-only session are
checked before the file is read), and a rejected file's report of bad rows (and their CSV).
"""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web

from services.operator.console.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    Context,
    Operator,
    check_csrf,
    check_origin,
    flash,
    page,
    resources,
    signed_in,
)
from services.operator.console.bulk_api import BulkApiError, bulk_api
from services.operator.console.pages.bulk import BASE
from services.operator.handlers import products as handlers
from shared.domain.device_search import spreadsheet_safe
from shared.errors import Forbidden, InvalidInput, NotFound

CHUNK_BYTES = 256 * 1024  # read from the browser and sent on to the bulk API at a time
FIELD_MAX_BYTES = 4096  # a form field other than the file (token, product ID)
FIELDS = (CSRF_FIELD, "product_id")
WARNINGS_FLASHED = 5
# The session keeps the latest rejection report only (the next upload replaces it): the
# file is streamed through and not kept, so the report cannot be derived again, and one
# report of at most bulk_api.ROWS_KEPT rows bounds what a session holds.
REJECTION = "bulk_rejection"


async def _field(part: BodyPartReader) -> str:
    """A small form field (bounded: a huge one is refused, not read into memory)."""
    data = bytearray()
    while chunk := await part.read_chunk(1024):
        data += chunk
        if len(data) > FIELD_MAX_BYTES:
            raise InvalidInput(f"the form field {part.name!r} is too long", field=part.name)
    return data.decode("utf-8", errors="replace")


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK_BYTES):
        yield chunk


async def upload(request: web.Request) -> web.StreamResponse:
    """``POST /console/bulk-registrations`` (multipart: ``csrf_token``, ``product_id``, then
    ``file``). Read part by part: the token (or the ``X-CSRF-Token`` header) is checked and
    a read-only session refused (403) before the file is read; the file goes on to the bulk
    API chunk by chunk. Then 303 to the new registration's page, the rejection report, or
    back to the list with the bulk API's message flashed. With ``Accept:
    application/json`` (static/bulk.js) the answer is ``{"location": ...}`` instead of the
    redirect, for the script to go there."""
    check_origin(request)
    operator = await signed_in(request)
    wants_json = request.headers.get("Accept", "") == "application/json"
    if CSRF_HEADER in request.headers:
        check_csrf(operator.csrf, request.headers[CSRF_HEADER])
        checked = True
    else:
        checked = False
    if checked and operator.read_only:
        raise _read_only()
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, KeyError):
        raise InvalidInput("send the upload form (multipart/form-data)", field="file") from None
    fields: dict[str, str] = {}
    file_part: BodyPartReader | None = None
    while (part := await _next_part(reader)) is not None:
        if not isinstance(part, BodyPartReader):
            raise InvalidInput("a nested multipart body is not an upload form", field="file")
        if part.name == "file":
            file_part = part
            break
        if part.name not in FIELDS or part.name in fields:
            raise InvalidInput(f"unexpected or repeated form field {part.name!r}", field=str(part.name))
        fields[part.name] = await _field(part)
        if part.name == CSRF_FIELD and not checked:
            check_csrf(operator.csrf, fields[CSRF_FIELD])
            checked = True
            if operator.read_only:
                raise _read_only()
    if not checked:
        check_csrf(operator.csrf, None)
    if operator.read_only:  # unreachable once checked; kept as the rule's last line
        raise _read_only()
    location = await _forward(request, operator, fields.get("product_id", "").strip(), file_part)
    if wants_json:
        return web.json_response({"location": location})
    raise web.HTTPSeeOther(location)


async def _next_part(reader: MultipartReader) -> BodyPartReader | MultipartReader | None:
    """The next part of the upload form; a malformed body (a bad boundary, a part cut short,
    a header the parser refuses) is a 400, never the parser's exception as a 500."""
    try:
        return await reader.next()
    except web.HTTPException:
        raise
    except Exception:
        raise InvalidInput(
            "the upload form could not be read: it is not well-formed multipart", field="file"
        ) from None


def _read_only() -> Forbidden:
    return Forbidden(
        "this session is read-only (a viewer's, or a read-only key's): it cannot upload",
        rule="scope=read-only",
    )


async def _forward(
    request: web.Request, operator: Operator, product_id: str, file_part: BodyPartReader | None
) -> str:
    """Send the file on; where the browser goes next."""
    if not product_id:
        flash(operator, "Choose the product the devices are of.", "error")
        return BASE
    if file_part is None or not file_part.filename:
        flash(operator, "Choose a CSV file to upload.", "error")
        return BASE
    api = bulk_api(resources(request), operator)
    try:
        done = await api.upload(product_id, file_part.filename, _chunks(file_part))
    except BulkApiError as exc:
        if exc.rejected_rows:
            report_id = secrets.token_urlsafe(9)
            operator.session[REJECTION] = {
                "id": report_id,
                "file_name": file_part.filename[:255],
                "product_id": product_id[:64],
                "status": exc.status,
                "message": exc.message,
                "errors_total": exc.errors_total,
                "errors": exc.errors,
            }
            return f"{BASE}/rejections/{report_id}"
        flash(operator, f"The file was not uploaded. {exc.message}", "error")
        return BASE
    flash(
        operator,
        f"{done.get('file_name') or 'The file'}: {done.get('rows', 0):,} rows checked and stored. "
        "Publish it to create the devices.",
    )
    warnings = done.get("warnings")
    if isinstance(warnings, list) and warnings:
        shown = "; ".join(
            f"line {w.get('line')}: {w.get('reason')}"
            for w in warnings[:WARNINGS_FLASHED]
            if isinstance(w, dict)
        )
        total = done.get("warnings_total", len(warnings))
        flash(operator, f"{total} warning(s), shown once: {shown}", "warning")
    return f"{BASE}/{done.get('id', '')}"


def _rejection(operator: Operator, report_id: str) -> dict[str, Any]:
    report = operator.session.get(REJECTION)
    if not isinstance(report, dict) or report.get("id") != report_id:
        raise NotFound(
            "this rejection report is no longer kept (a session keeps the latest one only)",
            field="report",
        )
    return report


@page("bulk_rejected.html")
async def rejected(request: web.Request, operator: Operator) -> Context:
    report = _rejection(operator, request.match_info["report"])
    products = await handlers.list_products(resources(request).pool, operator.account)
    return {"report": report, "product_names": {p.id: p.name for p in products}}


async def rejected_csv(request: web.Request) -> web.StreamResponse:
    """The rejected rows as CSV (line, column, value, reason), every cell spreadsheet-safe."""
    operator = await signed_in(request)
    report = _rejection(operator, request.match_info["report"])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["line", "column", "value", "reason"])
    for row in report["errors"]:
        writer.writerow([row["line"], *(spreadsheet_safe(row[k]) for k in ("column", "value", "reason"))])
    return web.Response(
        body=out.getvalue().encode(),
        content_type="text/csv",
        charset="utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="rejected-rows-{report["id"]}.csv"',
            "Cache-Control": "no-store",
        },
    )


ROUTES: list[web.RouteDef] = [
    web.post("/bulk-registrations", upload),
    web.get("/bulk-registrations/rejections/{report}", rejected),
    web.get("/bulk-registrations/rejections/{report}/rows.csv", rejected_csv),
]
