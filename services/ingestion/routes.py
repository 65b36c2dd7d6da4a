"""Ingestion's wiring on HTTP: the bulk registration routes (authenticated)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.ingestion import handlers
from services.ingestion.settings import BulkLimits
from shared.db import bulk
from shared.errors import PayloadTooLarge
from shared.http import account_for, api_key, json_response, path_id
from shared.kafka import publish
from shared.pipeline import PIPELINE

OPENAPI = Path(__file__).with_name("openapi.yaml")


def add_routes(app: web.Application, limits: BulkLimits) -> None:
    async def upload(request: web.Request) -> web.Response:
        pipeline = request.app[PIPELINE]
        account = await account_for(api_key(request), pipeline.pool)
        if request.content_length is not None and request.content_length > limits.max_bytes:
            # Said up front: refused before a byte of the body is read or spooled.
            raise PayloadTooLarge(
                f"the file is larger than the limit of {limits.max_bytes} bytes (FLEETREG_BULK_MAX_BYTES)",
                rule=f"max_bytes={limits.max_bytes}",
            )
        registration = await handlers.ingest(
            pipeline.pool,
            pipeline.keyring,
            account,
            request.query.get("product_id", ""),
            request.query.get("file_name", ""),
            request.content.iter_chunked(256 * 1024),
            limits,
        )
        return json_response(registration, status=201)

    async def list_all(request: web.Request) -> web.Response:
        pipeline = request.app[PIPELINE]
        account = await account_for(api_key(request), pipeline.pool)
        return json_response({"bulk_registrations": await bulk.list_bulk(pipeline.pool, account.id)})

    async def show(request: web.Request) -> web.Response:
        pipeline = request.app[PIPELINE]
        account = await account_for(api_key(request), pipeline.pool)
        return json_response(
            await bulk.get_bulk(pipeline.pool, account.id, path_id(request, "registration_id"))
        )

    async def start_publish(request: web.Request) -> web.Response:
        pipeline = request.app[PIPELINE]
        account = await account_for(api_key(request), pipeline.pool)
        registration_id = path_id(request, "registration_id")
        first = await handlers.request_publish(pipeline.pool, account, registration_id)
        await publish(pipeline.producer, pipeline.topics.bulk_publish, registration_id, first)
        return json_response(await bulk.get_bulk(pipeline.pool, account.id, registration_id), status=202)

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(text=OPENAPI.read_text(encoding="utf-8"), content_type="application/yaml")

    app.router.add_get("/openapi.yaml", openapi)
    app.router.add_post("/v1/bulk-registrations", upload)
    app.router.add_get("/v1/bulk-registrations", list_all)
    app.router.add_get("/v1/bulk-registrations/{registration_id}", show)
    app.router.add_post("/v1/bulk-registrations/{registration_id}/publish", start_publish)
