"""The bulk registration API (authenticated): HTTP onto the handlers."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.ingestion import handlers, views
from services.ingestion.resources import RESOURCES
from shared.errors import InvalidInput, PayloadTooLarge
from shared.events import BulkPublish
from shared.http import account_for, api_key, json_response, path_id
from shared.kafka import publish

OPENAPI = Path(__file__).with_name("openapi.yaml")
READ_CHUNK_BYTES = 256 * 1024


async def upload(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    account = await account_for(api_key(request), r.pool, write=True)
    if request.content_length is not None and request.content_length > r.limits.max_bytes:
        # Said up front: refused before a byte of the body is read or spooled.
        raise PayloadTooLarge(
            f"the file is larger than the limit of {r.limits.max_bytes} bytes (FLEETREG_BULK_MAX_BYTES)",
            rule=f"max_bytes={r.limits.max_bytes}",
        )
    done = await handlers.ingest(
        r.pool,
        r.keyring,
        account,
        request.query.get("product_id", ""),
        request.query.get("file_name", ""),
        request.content.iter_chunked(READ_CHUNK_BYTES),
        r.limits,
    )
    return json_response(views.upload(done), status=201)


async def list_all(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    account = await account_for(api_key(request), r.pool)
    if request.query:  # the listing has no filters or paging: a parameter would be ignored
        name = next(iter(request.query))
        raise InvalidInput(
            f"unknown parameter {name!r}: the bulk listing takes none", field=name, rule="known_parameters"
        )
    found = await handlers.list_registrations(r.pool, account)
    return json_response(views.registrations(found))


async def show(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    account = await account_for(api_key(request), r.pool)
    found = await handlers.registration(r.pool, account, path_id(request, "registration_id"))
    return json_response(views.registration_detail(found))


async def start_publish(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    account = await account_for(api_key(request), r.pool, write=True)

    async def send(event: BulkPublish) -> None:
        await publish(r.producer, r.topics.bulk_publish, event.registration_id, event)

    found = await handlers.request_publish(r.pool, send, account, path_id(request, "registration_id"))
    return json_response(views.registration_detail(found), status=202)


async def cancel(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    account = await account_for(api_key(request), r.pool, write=True)
    found = await handlers.cancel(r.pool, account, path_id(request, "registration_id"))
    return json_response(views.cancelled(found))


async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=OPENAPI.read_text(encoding="utf-8"), content_type="application/yaml")


ROUTES: list[web.RouteDef] = [
    web.get("/openapi.yaml", openapi),
    web.post("/v1/bulk-registrations", upload),
    web.get("/v1/bulk-registrations", list_all),
    web.get("/v1/bulk-registrations/{registration_id}", show),
    web.post("/v1/bulk-registrations/{registration_id}/publish", start_publish),
    web.post("/v1/bulk-registrations/{registration_id}/cancel", cancel),
]
