"""The bulk registration API (authenticated): HTTP onto the handlers."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from aiohttp import web

from services.ingestion import handlers, uploads, views
from services.ingestion.resources import RESOURCES
from shared.domain.roles import Role, at_least
from shared.errors import DomainError, InvalidInput, PayloadTooLarge, shortened
from shared.events import BulkPublish
from shared.http import authenticate, json_response, parse_json_body, path_id, query_params
from shared.kafka import publish

OPENAPI = Path(__file__).with_name("openapi.yaml")
READ_CHUNK_BYTES = 256 * 1024
# How long a refused upload's connection stays open, reading nothing, after the answer was
# sent and the sending side shut: time for the client to read it before the close.
CLOSE_GRACE_S = 1.0


async def upload(request: web.Request) -> web.StreamResponse:
    r = request.app[RESOURCES]
    try:
        account = await authenticate(request, r.pool, write=True)
        length = request.content_length
        if length is not None and length > r.limits.max_bytes:
            # Said up front: refused before a byte of the body is read or spooled.
            raise PayloadTooLarge(
                f"the file is larger than the limit of {r.limits.max_bytes} bytes (FLEETREG_BULK_MAX_BYTES)",
                rule=f"max_bytes={r.limits.max_bytes}",
            )
        # Without a length, the most it may spool: the size limit.
        with r.gate.admit(account.key_id or account.id, length if length is not None else r.limits.max_bytes):
            done = await handlers.ingest(
                r,
                account,
                request.query.get("product_id", ""),
                request.query.get("file_name", ""),
                uploads.paced(request.content.iter_chunked(READ_CHUNK_BYTES), r.bounds),
                handlers.hook_query(request.query),
            )
    except DomainError as exc:
        if request.content.is_eof():
            raise
        return await _refuse_and_close(request, exc)
    return json_response(views.upload(done), status=201)


async def _refuse_and_close(request: web.Request, error: DomainError) -> web.StreamResponse:
    """Answer a refusal while the body is still coming, and read no more of it: the answer
    is sent and the sending side shut (the client reads it to its end), then after
    CLOSE_GRACE_S the connection is closed. Without this aiohttp would read on, discarding,
    for its lingering time (10 s, at whatever speed the client sends) before closing."""
    response = json_response(
        error.to_dict(), status=error.status, headers={**error.headers(), "Connection": "close"}
    )
    transport = request.transport
    with contextlib.suppress(ConnectionError):
        if transport is not None:
            transport.pause_reading()  # the rest of the body stays unread
        await response.prepare(request)
        await response.write_eof()
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()
            # A close with unread data sends a reset, which may overtake the answer.
            await asyncio.sleep(CLOSE_GRACE_S)
    request.protocol.force_close()
    return response


async def list_all(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    account = await authenticate(request, r.pool, write=False)
    if request.query:  # the listing has no filters or paging: a parameter would be ignored
        name = next(iter(request.query))
        raise InvalidInput(
            f"unknown parameter {shortened(name)!r}: the bulk listing takes none",
            field=shortened(name),
            rule="known_parameters",
        )
    found = await handlers.list_registrations(r.pool, account)
    return json_response(views.registrations(found, masked=not at_least(account.role, Role.ADMIN)))


async def show(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    account = await authenticate(request, r.pool, write=False)
    found = await handlers.registration(r.pool, account, path_id(request, "registration_id"))
    return json_response(views.registration_detail(found, masked=not at_least(account.role, Role.ADMIN)))


async def update(request: web.Request) -> web.Response:
    """An admin's: the change takes only the hook's settings (docs/security.md, "Roles")."""
    r = request.app[RESOURCES]
    account = await authenticate(request, r.pool, role=Role.ADMIN)
    registration_id = path_id(request, "registration_id")
    body = await parse_json_body(request)
    changed = await handlers.update_registration(r, account, registration_id, body)
    return json_response(views.changed(changed))


async def start_publish(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    account = await authenticate(request, r.pool, write=True)

    async def send(event: BulkPublish) -> None:
        await publish(r.producer, r.topics, event)

    found = await handlers.request_publish(r.pool, send, account, path_id(request, "registration_id"))
    return json_response(views.registration_detail(found), status=202)


async def cancel(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    account = await authenticate(request, r.pool, write=True)
    found = await handlers.cancel(r.pool, account, path_id(request, "registration_id"))
    return json_response(views.cancelled(found))


async def try_hook(request: web.Request) -> web.Response:
    """An admin's, as the hook is: the call is a signed request to its URL."""
    r = request.app[RESOURCES]
    account = await authenticate(request, r.pool, role=Role.ADMIN)
    registration_id = path_id(request, "registration_id")
    body = await parse_json_body(request)
    tested = await handlers.try_hook(r, account, registration_id, body)
    return json_response(views.hook_test(tested))


async def list_hook_calls(request: web.Request) -> web.Response:
    """An admin's, as the hook is: what the hook was asked and answered."""
    r = request.app[RESOURCES]
    account = await authenticate(request, r.pool, role=Role.ADMIN)
    found = await handlers.hook_calls(
        r.pool, account, path_id(request, "registration_id"), query_params(request)
    )
    return json_response(views.hook_calls(found))


async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=OPENAPI.read_text(encoding="utf-8"), content_type="application/yaml")


ROUTES: list[web.RouteDef] = [
    web.get("/openapi.yaml", openapi),
    web.post("/v1/bulk-registrations", upload),
    web.get("/v1/bulk-registrations", list_all),
    web.get("/v1/bulk-registrations/{registration_id}", show),
    web.patch("/v1/bulk-registrations/{registration_id}", update),
    web.post("/v1/bulk-registrations/{registration_id}/publish", start_publish),
    web.post("/v1/bulk-registrations/{registration_id}/cancel", cancel),
    web.post("/v1/bulk-registrations/{registration_id}/hook/test", try_hook),
    web.get("/v1/bulk-registrations/{registration_id}/hook/calls", list_hook_calls),
]
