"""Bulk registrations: list and upload, a rejected file's bad rows (and their CSV), one
registration's page with publish (live progress) and cancel.

Everything goes through the bulk API (:mod:`services.operator.console.bulk_api`) with the
session's key: the browser posts to the console, its own origin, and the upload is
streamed through chunk by chunk, never held whole in memory.
"""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web

from services.operator import handlers
from services.operator.console.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    Context,
    Operator,
    SignInRequired,
    action,
    check_csrf,
    check_origin,
    flash,
    page,
    render,
    resources,
    signed_in,
)
from services.operator.console.bulk_api import BulkApi, BulkApiError, BulkApiUnreachable, bulk_api
from shared.domain.device_search import spreadsheet_safe
from shared.domain.identifiers import is_uuid
from shared.errors import Forbidden, InvalidInput, NotFound

BASE = "/console/bulk-registrations"
CHUNK_BYTES = 256 * 1024  # read from the browser and sent on to the bulk API at a time
FIELD_MAX_BYTES = 4096  # a form field other than the file (token, product ID)
FIELDS = (CSRF_FIELD, "product_id")
WARNINGS_FLASHED = 5
# The session keeps the latest rejection report only (the next upload replaces it): the
# file is streamed through and not kept, so the report cannot be derived again, and one
# report of at most bulk_api.ROWS_KEPT rows bounds what a session holds.
REJECTION = "bulk_rejection"


def accepts_bulk(product: Any) -> bool:
    """A bulk upload takes a locked product not already serving an auto registration."""
    return bool(product.status == "locked" and product.registration_kind in (None, "bulk"))


@page("bulk.html")
async def list_bulk(request: web.Request, operator: Operator) -> Context:
    r = resources(request)
    found = await bulk_api(r, operator).list()
    products = await handlers.list_products(r.pool, operator.account)
    names = {p.id: p.name for p in products}
    return {
        "registrations": found,
        "product_names": names,
        "eligible": [{"id": p.id, "name": p.name} for p in products if accepts_bulk(p)],
    }


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
    return Forbidden("this session's API key is read-only: it cannot upload", rule="scope=read-only")


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


def _registration_id(request: web.Request) -> str:
    """The path's registration ID; anything but a UUID is no registration of anyone's."""
    found = request.match_info["registration_id"]
    if not is_uuid(found):
        raise NotFound("no such bulk registration in this account", field="registration_id")
    return found


async def _show(api: BulkApi, registration_id: str) -> dict[str, Any]:
    try:
        return await api.show(registration_id)
    except BulkApiError as exc:
        if exc.status == 404:
            raise NotFound("no such bulk registration in this account", field="registration_id") from None
        raise


@page("bulk_show.html")
async def show(request: web.Request, operator: Operator) -> Context:
    r = resources(request)
    found = await _show(bulk_api(r, operator), _registration_id(request))
    products = await handlers.list_products(r.pool, operator.account)
    return {"b": found, "product_names": {p.id: p.name for p in products}}


async def progress(request: web.Request) -> web.StreamResponse:
    """The publish progress fragment (htmx polls it every second while publishing). A lapsed
    session sends the whole tab to the sign-in page (``HX-Redirect``) and back to the
    registration, rather than swapping a sign-in page into the progress box."""
    try:
        operator = await signed_in(request)
    except SignInRequired:
        if request.headers.get("HX-Request") != "true":
            raise
        back = f"{BASE}/{_registration_id(request)}"
        return web.Response(status=204, headers={"HX-Redirect": f"/console/sign-in?next={back}"})
    found = await _show(bulk_api(resources(request), operator), _registration_id(request))
    return render("bulk_progress.html", request, None, {"b": found})


def _confirmed(form: Any, what: str) -> None:
    if form.get("confirm") != "yes":
        raise InvalidInput(f"Tick the box to confirm that you want to {what}.", field="confirm")


async def _write(api_call: Any, registration_id: str) -> dict[str, Any]:
    """publish or cancel; another account's (or a gone) registration is the 404 page, an
    unreachable bulk API the 503 page (not a flash: nothing happened and the page says why)."""
    try:
        result: dict[str, Any] = await api_call(registration_id)
    except BulkApiUnreachable as exc:
        raise web.HTTPServiceUnavailable(reason=exc.message) from None
    except BulkApiError as exc:
        if exc.status == 404:
            raise web.HTTPNotFound(reason="No such bulk registration in this account") from None
        raise
    return result


@action()
async def publish(request: web.Request, operator: Operator, form: Any) -> str:
    registration_id = _registration_id(request)
    _confirmed(form, "publish")
    done = await _write(bulk_api(resources(request), operator).publish, registration_id)
    flash(operator, f"Publishing {done.get('rows', 0):,} devices.")
    return f"{BASE}/{registration_id}"


@action()
async def cancel(request: web.Request, operator: Operator, form: Any) -> str:
    registration_id = _registration_id(request)
    _confirmed(form, "cancel this upload")
    done = await _write(bulk_api(resources(request), operator).cancel, registration_id)
    flash(
        operator,
        f"Cancelled {done.get('file_name') or 'the upload'} ({done.get('rows', 0):,} rows): "
        "no device was created.",
    )
    return BASE


ROUTES: list[web.RouteDef] = [
    web.get("/bulk-registrations", list_bulk),
    web.post("/bulk-registrations", upload),
    web.get("/bulk-registrations/rejections/{report}", rejected),
    web.get("/bulk-registrations/rejections/{report}/rows.csv", rejected_csv),
    web.get("/bulk-registrations/{registration_id}", show),
    web.get("/bulk-registrations/{registration_id}/progress", progress),
    web.post("/bulk-registrations/{registration_id}/publish", publish),
    web.post("/bulk-registrations/{registration_id}/cancel", cancel),
]
